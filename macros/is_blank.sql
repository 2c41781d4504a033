{#- CONTRACT §2: a value is blank when it is null, empty, or made only of spaces,
    tabs, newlines, carriage returns, form feeds and vertical tabs. Other Unicode
    spaces (no-break space, ideographic space) are content, not blank.
    translate() with an empty replacement deletes the listed characters on both
    DuckDB and PostgreSQL; chr() keeps the list free of escape-syntax differences. -#}
{% macro is_blank(expression) -%}
    ({{ expression }} is null
     or length(translate({{ expression }}, ' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13), '')) = 0)
{%- endmacro %}
