{#- source -> renamed: casts and renames only. Written as one SELECT over a
    subquery rather than WITH clauses: PostgreSQL does not flatten a view whose
    query has a WITH clause into the queries that read it, and the deciding-event
    query downstream would lose the order of the app's index (docs/DEPLOYMENT.md). -#}

select
    cast(event_id as {{ dbt.type_bigint() }}) as event_id,
    cast(annotation_id as {{ dbt.type_string() }}) as annotation_id,
    cast(event_type as {{ dbt.type_string() }}) as event_type,
    cast(label as {{ dbt.type_string() }}) as label,
    cast(actor as {{ dbt.type_string() }}) as actor,
    cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
    cast(note as {{ dbt.type_string() }}) as note

from (

    select * from {{ source('app', 'annotation_events') }}

) as source
