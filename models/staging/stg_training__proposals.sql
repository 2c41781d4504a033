{#- source -> renamed. The table is optional: when `training.proposals` does not
    exist (init-db not run yet, or a trainer older than migration 8), this is an
    empty relation of the same columns, so the datasets build either way. The
    comment below records the dependency for dbt even when the branch that reads
    the table is not taken. -#}
-- depends_on: {{ source('training', 'proposals') }}

{%- set proposals = source('training', 'proposals') %}
{%- set exists = execute and adapter.get_relation(proposals.database, proposals.schema, proposals.identifier) is not none %}

{% if exists %}

select
    cast(model_version_id as {{ dbt.type_bigint() }}) as model_version_id,
    cast(annotation_id as {{ dbt.type_string() }}) as annotation_id,
    cast(actor as {{ dbt.type_string() }}) as actor,
    cast(label as {{ dbt.type_string() }}) as proposed_label,
    cast(confidence as double precision) as confidence,
    cast(margin as double precision) as margin,
    cast(created_at as {{ dbt.type_timestamp() }}) as proposed_at

from (

    select * from {{ proposals }}

) as source

{% else %}

select
    cast(null as {{ dbt.type_bigint() }}) as model_version_id,
    cast(null as {{ dbt.type_string() }}) as annotation_id,
    cast(null as {{ dbt.type_string() }}) as actor,
    cast(null as {{ dbt.type_string() }}) as proposed_label,
    cast(null as double precision) as confidence,
    cast(null as double precision) as margin,
    cast(null as {{ dbt.type_timestamp() }}) as proposed_at

where 1 = 0

{% endif %}
