{#- CONTRACT §2.2–2.6: an annotation trains exactly when its deciding event is an
    acceptance of a non-blank label, its row exists, its document's row exists and
    is not deleted, and its text is not blank. Label and text are kept exactly as
    stored; the app's display label and status are never read. -#}

with

decisions as (

    select * from {{ ref('int_annotation_decisions') }}

    where deciding_event_type = 'accepted'

),

annotations as (

    select * from {{ ref('stg_app__annotations') }}

),

documents as (

    select * from {{ ref('stg_app__documents') }}

),

-- Every accepted decision with its annotation rows and their document rows, before
-- any other filter, so that a primary key stored twice in a dirty source shows as
-- two rows (an annotation row whose document is missing still counts: left join).
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
        decisions.deciding_label as label,
        decisions.decided_at as accepted_at,
        decisions.decided_by as accepted_by,
        decisions.deciding_event_id as accepted_event_id,
        documents.document_id as document_row_id,
        documents.deleted_at as document_deleted_at,
        -- Decisions are unique per annotation: more than one row means the
        -- annotation or its document is stored twice, and which copy holds
        -- (which text? deleted or not?) is ambiguous, so it does not train.
        count(*) over (partition by annotations.annotation_id) as source_rows

    from decisions

    inner join annotations
        on decisions.annotation_id = annotations.annotation_id

    left join documents
        on annotations.document_id = documents.document_id

),

accepted as (

    select
        annotation_id,
        document_id,
        page,
        x0,
        y0,
        x1,
        y1,
        text,
        label,
        accepted_at,
        accepted_by,
        accepted_event_id

    from joined

    where source_rows = 1
        and document_row_id is not null
        and not {{ deleted_by_as_of('document_deleted_at') }}
        and not {{ is_blank('label') }}
        and not {{ is_blank('text') }}

)

select * from accepted
