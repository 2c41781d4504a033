with

source as (

    select * from {{ source('app', 'annotation_events') }}

),

renamed as (

    select
        cast(event_id as {{ dbt.type_bigint() }}) as event_id,
        cast(annotation_id as {{ dbt.type_string() }}) as annotation_id,
        cast(event_type as {{ dbt.type_string() }}) as event_type,
        cast(label as {{ dbt.type_string() }}) as label,
        cast(actor as {{ dbt.type_string() }}) as actor,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
        cast(note as {{ dbt.type_string() }}) as note

    from source

)

select * from renamed
