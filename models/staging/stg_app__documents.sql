with

source as (

    select * from {{ source('app', 'documents') }}

),

renamed as (

    select
        cast(document_id as {{ dbt.type_string() }}) as document_id,
        cast(filename as {{ dbt.type_string() }}) as filename,
        cast(sha256 as {{ dbt.type_string() }}) as document_sha256,
        cast(page_count as {{ dbt.type_int() }}) as page_count,
        cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
        cast(deleted_at as {{ dbt.type_timestamp() }}) as deleted_at

    from source

)

select * from renamed
