{#- The first row of each group of `relation` by `order_by` (a list of ORDER BY terms,
    which must order the rows of a group totally). One rule, two spellings: the
    result is the same row on every engine, only the plan differs. -#}
{% macro first_per_group(relation, group_by, order_by) -%}
    {{ return(adapter.dispatch('first_per_group')(relation, group_by, order_by)) }}
{%- endmacro %}

{#- A numbered window, filtered to its first row. -#}
{% macro default__first_per_group(relation, group_by, order_by) -%}
    select * from (
        select
            {{ relation }}.*,
            row_number() over (partition by {{ group_by }} order by {{ order_by | join(', ') }}) as rank_in_group
        from {{ relation }}
    ) as ranked
    where rank_in_group = 1
{%- endmacro %}

{#- PostgreSQL: DISTINCT ON. The planner estimates it as one row per group (from the
    column's statistics), where a filter on a window's number gets a fixed 0.5% guess;
    that guess, compounded by the joins downstream, chose nested loops over a million
    row pairs per thousand rows (docs/BENCHMARKS.md). It also reads the app's index in
    order (docs/DEPLOYMENT.md §2) and sorts only within equal index keys. -#}
{% macro postgres__first_per_group(relation, group_by, order_by) -%}
    select distinct on ({{ group_by }}) {{ relation }}.*, 1 as rank_in_group
    from {{ relation }}
    order by {{ group_by }}, {{ order_by | join(', ') }}
{%- endmacro %}
