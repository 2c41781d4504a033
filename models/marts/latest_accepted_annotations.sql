{#- CONTRACT §2.2–2.6: an annotation trains exactly when its deciding event is an
    acceptance of a non-blank label, its row exists, its document's row exists and
    is not deleted, and its text is not blank. Label and text are kept exactly as
    stored; the app's display label and status are never read. -#}

with

decisions as (

    select * from {{ ref('int_annotation_decisions') }}

    where deciding_event_type = 'accepted'

),

-- A primary key that occurs twice in a dirty source makes the row ambiguous
-- (which text? deleted or not?): such annotations and documents do not train.
-- The copies are counted beside each row and filtered after the joins, which
-- keeps the planner's row estimates for the joins honest.
annotations as (

    select
        *,
        count(*) over (partition by annotation_id) as annotation_rows

    from {{ ref('stg_app__annotations') }}

),

documents as (

    select
        document_id,
        deleted_at,
        count(*) over (partition by document_id) as document_rows

    from {{ ref('stg_app__documents') }}

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

    inner join annotations
        on decisions.annotation_id = annotations.annotation_id

    inner join documents
        on annotations.document_id = documents.document_id

    where annotations.annotation_rows = 1
        and documents.document_rows = 1
        and not {{ deleted_by_as_of('documents.deleted_at') }}
        and not {{ is_blank('decisions.deciding_label') }}
        and not {{ is_blank('annotations.text') }}

)

select * from accepted
