"""HTTP(S) interception: mitmproxy on the sidecar's event loop, with our recording addon."""
