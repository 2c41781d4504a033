{#- CONTRACT §3: the split is by document, from a salted md5 of its id, so adding
    documents never moves an old one and both engines agree on every row. -#}

with

latest_accepted as (

    select * from {{ ref('latest_accepted_annotations') }}

),

split as (

    select
        *,
        {{ split_for_document('document_id') }} as split

    from latest_accepted

)

select * from split
