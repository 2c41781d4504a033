{#- source -> renamed: casts and renames only. Written as one SELECT over a
    subquery rather than WITH clauses: PostgreSQL does not flatten a view whose
    query has a WITH clause into the queries that read it, and the deciding-event
    query downstream would lose the order of the app's index (docs/DEPLOYMENT.md). -#}

select
    cast(document_id as {{ dbt.type_string() }}) as document_id,
    cast(filename as {{ dbt.type_string() }}) as filename,
    cast(sha256 as {{ dbt.type_string() }}) as document_sha256,
    cast(page_count as {{ dbt.type_int() }}) as page_count,
    cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
    cast(deleted_at as {{ dbt.type_timestamp() }}) as deleted_at

from (

    select * from {{ source('app', 'documents') }}

) as source
