{#- source -> renamed: casts and renames only. Written as one SELECT over a
    subquery rather than WITH clauses: PostgreSQL does not flatten a view whose
    query has a WITH clause into the queries that read it, and the deciding-event
    query downstream would lose the order of the app's index (docs/DEPLOYMENT.md). -#}

select
    cast(annotation_id as {{ dbt.type_string() }}) as annotation_id,
    cast(document_id as {{ dbt.type_string() }}) as document_id,
    cast(page as {{ dbt.type_int() }}) as page,
    cast(x0 as double precision) as x0,
    cast(y0 as double precision) as y0,
    cast(x1 as double precision) as x1,
    cast(y1 as double precision) as y1,
    cast(text as {{ dbt.type_string() }}) as text,
    cast(label as {{ dbt.type_string() }}) as display_label,
    cast(status as {{ dbt.type_string() }}) as display_status,
    cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at

from (

    select * from {{ source('app', 'annotations') }}

) as source
