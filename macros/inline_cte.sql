{#- Written between a CTE's name and its body: `placed as {{ inline_cte() }} ( … )`.
    PostgreSQL materialises a CTE that is read more than once, and a materialised
    CTE has no statistics: a filter pushed onto it (a not_null test, an analyst's
    `where`) is then guessed at one row, and the planner may rescan millions of rows
    once per row of the other side (measured: a test over int_proposal_answers ran
    past 20 minutes at 1M annotations). Inlined, each read is planned from the
    tables' own statistics. Other engines plan CTEs well as they are. -#}
{% macro inline_cte() -%}
    {{ return(adapter.dispatch('inline_cte')()) }}
{%- endmacro %}

{% macro default__inline_cte() -%}
{%- endmacro %}

{% macro postgres__inline_cte() -%}
    not materialized
{%- endmacro %}
