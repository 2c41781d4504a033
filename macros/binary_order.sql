{#- Text ordering that is the same on every engine: by code point, never by the
    database's locale. Used only to break exact ties deterministically. -#}
{% macro binary_order(expression) -%}
    {{ return(adapter.dispatch('binary_order')(expression)) }}
{%- endmacro %}

{% macro default__binary_order(expression) -%}
    {{ expression }} collate "C"
{%- endmacro %}

{#- DuckDB compares strings bytewise unless a collation is asked for. -#}
{% macro duckdb__binary_order(expression) -%}
    {{ expression }}
{%- endmacro %}
