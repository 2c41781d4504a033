{#- source -> renamed. The table is optional: when `training.split_overrides`
    does not exist (init-db not run yet), this is an empty relation of the same
    columns, so the datasets build either way. The comment below records the
    dependency for dbt even when the branch that reads the table is not taken. -#}
-- depends_on: {{ source('training', 'split_overrides') }}

{%- set overrides = source('training', 'split_overrides') %}
{%- set exists = execute and adapter.get_relation(overrides.database, overrides.schema, overrides.identifier) is not none %}

{% if exists %}

select
    cast(document_id as {{ dbt.type_string() }}) as document_id,
    cast(split as {{ dbt.type_string() }}) as split

from (

    select * from {{ overrides }}

) as source

{% else %}

select
    cast(null as {{ dbt.type_string() }}) as document_id,
    cast(null as {{ dbt.type_string() }}) as split

where 1 = 0

{% endif %}
