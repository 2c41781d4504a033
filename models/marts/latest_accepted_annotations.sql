{#- CONTRACT §2.2–2.6: an annotation trains exactly when its deciding event is an
    acceptance of a non-blank label, its row exists, its document's row exists and
    is not deleted, and its text is not blank. Label and text are kept exactly as
    stored; the app's display label and status are never read. -#}

with

decisions as (

    select * from {{ ref('int_annotation_decisions') }}

),

annotations as (

    select * from {{ ref('stg_app__annotations') }}

),

documents as (

    select * from {{ ref('stg_app__documents') }}

),

-- A primary key that occurs twice in a dirty source makes the row ambiguous
-- (which text? deleted or not?): such annotations and documents do not train.
unambiguous_annotations as (

    select annotation_id

    from annotations

    where annotation_id is not null

    group by annotation_id

    having count(*) = 1

),

live_documents as (

    select document_id

    from documents

    where document_id is not null

    group by document_id

    having count(*) = 1 and count(deleted_at) = 0

),

accepted as (

    select
        annotations.annotation_id,
        annotations.document_id,
        annotations.page,
        annotations.x0,
        annotations.y0,
        annotations.x1,
        annotations.y1,
        annotations.text,
        decisions.deciding_label as label,
        decisions.decided_at as accepted_at,
        decisions.decided_by as accepted_by,
        decisions.deciding_event_id as accepted_event_id

    from decisions

    inner join unambiguous_annotations
        on decisions.annotation_id = unambiguous_annotations.annotation_id

    inner join annotations
        on decisions.annotation_id = annotations.annotation_id

    inner join live_documents
        on annotations.document_id = live_documents.document_id

    where decisions.deciding_event_type = 'accepted'
        and not {{ is_blank('decisions.deciding_label') }}
        and not {{ is_blank('annotations.text') }}

)

select * from accepted
