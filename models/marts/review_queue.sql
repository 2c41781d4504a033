{#- CONTRACT §7.3: one row per live segment in `pending` review state, with the
    label the app shows now (its latest change's) and the proposal of the
    pipeline's newest model version that proposed for it: among the segment's rows
    of training.proposals, the greatest model_version_id (ids grow with each
    registered version). priority 1 is reviewed first: the least confident
    proposal first, segments without a proposal last, then by document (code-point
    order) and reading order (page, y0, x0), then annotation_id: a total order. -#}

with

pending_segments as (

    select * from {{ ref('live_segments') }}

    where review_state = 'pending'

),

changes as (

    select * from {{ ref('int_annotation_changes') }}

),

proposals as (

    select * from {{ ref('stg_training__proposals') }}

    where annotation_id is not null
        and model_version_id is not null

),

-- (model_version_id, annotation_id) is the table's primary key: the rest of the
-- order only makes the row the same on every engine should a copy lack the key.
newest_proposals as (

    {{ first_per_group(
        'proposals',
        group_by='annotation_id',
        order_by=[
            'model_version_id desc',
            'proposed_at desc nulls last',
            binary_order('proposed_label') ~ ' desc nulls last',
            'confidence asc nulls last',
            binary_order('actor') ~ ' desc nulls last',
        ],
    ) }}

),

joined as (

    select
        pending_segments.annotation_id,
        pending_segments.document_id,
        pending_segments.page,
        pending_segments.x0,
        pending_segments.y0,
        pending_segments.x1,
        pending_segments.y1,
        pending_segments.text,
        pending_segments.review_state,
        changes.changed_label as current_label,
        newest_proposals.model_version_id,
        newest_proposals.proposed_label,
        newest_proposals.confidence,
        newest_proposals.margin,
        {{ model_name_of_actor('newest_proposals.actor') }} as model_name,
        {{ model_version_of_actor('newest_proposals.actor') }} as version,
        newest_proposals.proposed_at

    from pending_segments

    left join changes
        on pending_segments.annotation_id = changes.annotation_id

    left join newest_proposals
        on pending_segments.annotation_id = newest_proposals.annotation_id

),

final as (

    select
        joined.*,
        cast(row_number() over (
            order by
                confidence asc nulls last,
                {{ binary_order('document_id') }} asc,
                page asc nulls last,
                y0 asc nulls last,
                x0 asc nulls last,
                {{ binary_order('annotation_id') }} asc
        ) as {{ dbt.type_bigint() }}) as priority

    from joined

)

select * from final
