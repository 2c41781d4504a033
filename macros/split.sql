{#- CONTRACT §3. A document is in `eval` when
        int(first 8 hex digits of md5(split_salt || document_id), base 16) mod 100 < eval_percent
    and in `train` otherwise. md5 hashes the UTF-8 bytes on both engines; turning
    8 hex digits into an integer is spelled differently, hence the dispatch. -#}

{% macro split_for_document(document_id) -%}
    case when {{ split_bucket(document_id) }} < {{ eval_percent() }} then 'eval' else 'train' end
{%- endmacro %}

{#- The bucket (0..99) of a document id expression. -#}
{% macro split_bucket(document_id) -%}
    {{ return(adapter.dispatch('split_bucket')(document_id)) }}
{%- endmacro %}

{#- PostgreSQL: 'x' || hex read as bit(32) casts to an unsigned value in bigint. -#}
{% macro default__split_bucket(document_id) -%}
    (cast(cast('x' || substr(md5({{ sql_string_literal(var('split_salt')) }} || {{ document_id }}), 1, 8) as bit(32)) as bigint) % 100)
{%- endmacro %}

{#- DuckDB: a 0x-prefixed string casts to an integer as hexadecimal. -#}
{% macro duckdb__split_bucket(document_id) -%}
    (cast('0x' || substr(md5({{ sql_string_literal(var('split_salt')) }} || {{ document_id }}), 1, 8) as bigint) % 100)
{%- endmacro %}

{#- The eval_percent var, checked: an integer from 0 to 100. -#}
{% macro eval_percent() -%}
    {%- set value = var('eval_percent') -%}
    {%- set text = (value | string) | trim -%}
    {%- if not text.isdigit() or (text | int) > 100 -%}
        {{ exceptions.raise_compiler_error("var eval_percent must be an integer from 0 to 100, got '" ~ value ~ "'") }}
    {%- endif -%}
    {{ text | int }}
{%- endmacro %}
