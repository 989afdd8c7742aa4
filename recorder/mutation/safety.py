"""Whether an expression gives the same answer when PostgreSQL evaluates it twice.

Some rewrites evaluate the client's WHERE (and FROM) twice in one statement:
once to lock the rows and read their before image, once in the statement
itself. With one snapshot that is the same answer, unless something in it is
volatile (``random()``, ``nextval()``, a user function, which PostgreSQL makes
VOLATILE by default) or depends on scan order (``LIMIT`` without a total order,
``TABLESAMPLE``). We cannot ask the catalog, so only built-in functions known
to be immutable or stable pass; anything else makes the rewrite unsafe and the
statement runs unchanged (fail-open).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

_SAFE_NAMES = """
    abs acos asin atan atan2 ceil ceiling cos degrees div exp floor ln log log10 mod pi power
    radians round sign sin sqrt tan trunc width_bucket gcd lcm scale
    ascii bit_length btrim char_length character_length chr concat concat_ws convert_from
    convert_to decode encode format initcap left length lower lpad ltrim md5 octet_length
    overlay position quote_ident quote_literal quote_nullable regexp_count regexp_instr
    regexp_like regexp_match regexp_replace regexp_split_to_array regexp_substr repeat
    replace reverse right rpad rtrim split_part starts_with strpos substr substring
    to_ascii to_hex translate trim upper unistr normalize casefold
    age current_date current_time current_timestamp date_add
    date_bin date_part date_subtract date_trunc extract isfinite justify_days justify_hours
    justify_interval localtime localtimestamp make_date make_interval make_time
    make_timestamp make_timestamptz now statement_timestamp timezone to_char to_date
    to_number to_timestamp transaction_timestamp
    array_append array_cat array_dims array_fill array_length array_lower array_ndims
    array_position array_positions array_prepend array_remove array_replace
    array_to_string array_upper cardinality string_to_array unnest trim_array array_reverse
    generate_series generate_subscripts
    json_array_length json_build_array json_build_object json_extract_path
    json_extract_path_text json_object json_typeof jsonb_array_length jsonb_build_array
    jsonb_build_object jsonb_extract_path jsonb_extract_path_text jsonb_object
    jsonb_path_exists jsonb_path_match jsonb_path_query_first jsonb_typeof jsonb_exists
    jsonb_exists_any jsonb_exists_all to_json to_jsonb row_to_json array_to_json
    jsonb_array_elements jsonb_array_elements_text json_array_elements
    json_array_elements_text jsonb_each jsonb_each_text jsonb_object_keys
    lower_inc upper_inc lower_inf upper_inf isempty range_merge int4range int8range
    numrange tsrange tstzrange daterange multirange
    coalesce nullif greatest least num_nonnulls num_nulls
    host hostmask masklen netmask network family inet_same_family
    uuid_extract_timestamp uuid_extract_version
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery
    ts_rank ts_rank_cd
    current_setting current_user session_user current_schema current_database
    pg_typeof text int4 int8 int2 float8 numeric bool date
    bool_and bool_or count sum avg min max every array_agg string_agg
"""
SAFE_FUNCTIONS: Final = frozenset(_SAFE_NAMES.split())


def walk(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every wrapped node under ``node`` of pglast's JSON tree, as (type name, fields)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if len(item) == 1:
                name, fields = next(iter(item.items()))
                if name[:1].isupper() and isinstance(fields, dict):
                    yield name, fields
                    stack.extend(fields.values())
                    continue
            stack.extend(item.values())


def deterministic(nodes: Any) -> bool:
    """True when nothing under ``nodes`` could answer differently a second time."""
    for kind, fields in walk(nodes):
        if kind == "FuncCall":
            names = [n.get("String", {}).get("sval") for n in fields.get("funcname", ())]
            schema = names[0] if len(names) == 2 else "pg_catalog"
            if schema != "pg_catalog" or names[-1] not in SAFE_FUNCTIONS or "over" in fields:
                return False  # unknown, volatile, or a window (depends on row order)
        elif kind in ("RangeTableSample", "CurrentOfExpr") or (
            kind == "SelectStmt"
            and (
                "limitCount" in fields
                or "limitOffset" in fields
                or "lockingClause" in fields  # SKIP LOCKED / NOWAIT answer by what others hold
                or any(d for d in fields.get("distinctClause", ()))  # DISTINCT ON: first row wins
            )
        ):
            return False
    return True
