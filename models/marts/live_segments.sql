{#- CONTRACT §7.1: a live segment is an annotation whose row exists, whose document's
    row exists and is not deleted, whose text is not blank, and whose deciding event,
    if any, is not `deleted`. As in §2, an annotation or document stored twice is
    ambiguous, and not live. Its review_state is `pending` without a decision or
    when its latest change comes after its deciding event, else the decision's type. -#}

with

annotations as (

    select * from {{ ref('stg_app__annotations') }}

),

documents as (

    select * from {{ ref('stg_app__documents') }}

),

decisions as (

    select * from {{ ref('int_annotation_decisions') }}

),

changes as (

    select * from {{ ref('int_annotation_changes') }}

),

-- Every annotation row with its document rows, before any filter, so that a key
-- stored twice shows as two rows (as in latest_accepted_annotations).
joined as (

    select
        annotations.annotation_id,
        annotations.document_id,
        annotations.page,
        annotations.x0,
        annotations.y0,
        annotations.x1,
        annotations.y1,
        annotations.text,
        documents.document_id as document_row_id,
        documents.deleted_at as document_deleted_at,
        count(*) over (partition by annotations.annotation_id) as source_rows

    from annotations

    left join documents
        on annotations.document_id = documents.document_id

    where annotations.annotation_id is not null

),

live as (

    select
        joined.annotation_id,
        joined.document_id,
        joined.page,
        joined.x0,
        joined.y0,
        joined.x1,
        joined.y1,
        joined.text,
        case
            when decisions.deciding_event_id is null then 'pending'
            when changes.changed_at > decisions.decided_at then 'pending'
            when changes.changed_at = decisions.decided_at
                and changes.changed_event_id > decisions.deciding_event_id then 'pending'
            else decisions.deciding_event_type
        end as review_state

    from joined

    left join decisions
        on joined.annotation_id = decisions.annotation_id

    left join changes
        on joined.annotation_id = changes.annotation_id

    where joined.source_rows = 1
        and joined.document_row_id is not null
        and not {{ deleted_by_as_of('joined.document_deleted_at') }}
        and not {{ is_blank('joined.text') }}
        and (decisions.deciding_event_type is null or decisions.deciding_event_type <> 'deleted')

)

select * from live
