{#- Render a Jinja value as a SQL string literal, doubling embedded quotes. -#}
{% macro sql_string_literal(value) -%}
    '{{ (value | string) | replace("'", "''") }}'
{%- endmacro %}
