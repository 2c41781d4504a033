{#- CONTRACT §2: a value is blank when it is null, empty, or made only of spaces,
    tabs, newlines, carriage returns, form feeds and vertical tabs. Other Unicode
    spaces (no-break space, ideographic space) are content, not blank.
    ltrim() with a character list strips them from the left on both DuckDB and
    PostgreSQL: nothing is left exactly when the value holds only those characters.
    It stops at the first other character, where translate() rewrote every
    string (4x slower on a million texts, on both engines; docs/BENCHMARKS.md).
    chr() keeps the list free of escape-syntax differences. -#}
{% macro is_blank(expression) -%}
    ({{ expression }} is null
     or ltrim({{ expression }}, ' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)) = '')
{%- endmacro %}
