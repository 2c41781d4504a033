{#- The dbt var `as_of` (a UTC timestamp) builds the datasets as they were at that
    moment: only events that occurred at or before it decide, and a document
    deleted after it still counts as live. Unset, everything counts.

    Accepted spellings: 2026-11-23, 2026-11-23 18:00, 2026-11-23T18:00:00,
    2026-11-23T18:00:00.123456Z, …+00:00. Other offsets are refused: the app's
    timestamps are UTC and a silent conversion would be a surprise. -#}

{#- A SQL timestamp literal for `as_of`, or none when the var is unset. -#}
{% macro as_of_timestamp() -%}
    {%- set value = var('as_of', none) -%}
    {%- if value is none or (value | string | trim) == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set text = value | string | trim -%}
    {%- set match = modules.re.match('^(\\d{4}-\\d{2}-\\d{2})(?:[ T](\\d{2}:\\d{2}(?::\\d{2}(?:\\.\\d{1,6})?)?))?(?:Z|[+]00:?00)?$', text) -%}
    {%- if not match -%}
        {{ exceptions.raise_compiler_error("var as_of must be a UTC timestamp such as 2026-11-23 or 2026-11-23T18:00:00Z, got '" ~ text ~ "'") }}
    {%- endif -%}
    {%- set clock = match.group(2) or '00:00:00' -%}
    {%- if clock | length == 5 -%}{%- set clock = clock ~ ':00' -%}{%- endif -%}
    {%- set literal = match.group(1) ~ ' ' ~ clock -%}
    {#- Reject impossible dates (2026-02-30) here rather than in the database's cast. -#}
    {%- set parsed = modules.datetime.datetime.strptime(literal.split('.')[0], '%Y-%m-%d %H:%M:%S') -%}
    {{ return("cast('" ~ literal ~ "' as " ~ dbt.type_timestamp() ~ ")") }}
{%- endmacro %}

{#- True when `column` happened at or before `as_of` (always true without it). -#}
{% macro occurred_by_as_of(column) -%}
    {%- set as_of = as_of_timestamp() -%}
    {%- if as_of is none -%} (1 = 1) {%- else -%} ({{ column }} <= {{ as_of }}) {%- endif -%}
{%- endmacro %}

{#- True when a soft-delete timestamp means "deleted" at `as_of` (or now). -#}
{% macro deleted_by_as_of(column) -%}
    {%- set as_of = as_of_timestamp() -%}
    {%- if as_of is none -%} ({{ column }} is not null) {%- else -%} ({{ column }} is not null and {{ column }} <= {{ as_of }}) {%- endif -%}
{%- endmacro %}
