-- The order service's tables and its catalogue.
CREATE TABLE products (
    sku         text PRIMARY KEY,
    name        text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents > 0)
);

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer    text NOT NULL,
    total_cents integer NOT NULL,
    status      text NOT NULL,
    charge_id   text
);

CREATE TABLE order_lines (
    order_id    integer NOT NULL REFERENCES orders (id),
    sku         text NOT NULL REFERENCES products (sku),
    qty         integer NOT NULL CHECK (qty > 0),
    price_cents integer NOT NULL,
    PRIMARY KEY (order_id, sku)
);

INSERT INTO products (sku, name, price_cents) VALUES
    ('tea', 'Assam tea, 250 g', 850),
    ('mug', 'Stoneware mug', 1400),
    ('grinder', 'Burr coffee grinder', 18900);
