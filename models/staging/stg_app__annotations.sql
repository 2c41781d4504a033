with

source as (

    select * from {{ source('app', 'annotations') }}

),

renamed as (

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

    from source

)

select * from renamed
