{#- CONTRACT §3: the split is by document, from a salted md5 of its id, so adding
    documents never moves an old one and both engines agree on every row.
    Documents listed in the optional `training.split_overrides` are pinned to the
    side stated there (a curated gold set stays in eval); should one document be
    listed on both sides, eval wins, so a gold document never leaks into train. -#}

with

latest_accepted as (

    select * from {{ ref('latest_accepted_annotations') }}

),

pinned_documents as (

    select
        document_id,
        max(case when split = 'eval' then 1 else 0 end) as pinned_to_eval

    from {{ ref('stg_training__split_overrides') }}

    where split in ('train', 'eval')
        and document_id is not null

    group by document_id

),

split as (

    select
        latest_accepted.*,
        case
            when pinned_documents.pinned_to_eval = 1 then 'eval'
            when pinned_documents.pinned_to_eval = 0 then 'train'
            else {{ split_for_document('latest_accepted.document_id') }}
        end as split

    from latest_accepted

    left join pinned_documents
        on latest_accepted.document_id = pinned_documents.document_id

)

select * from split
