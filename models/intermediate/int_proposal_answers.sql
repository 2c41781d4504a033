{#- CONTRACT §7.2, the one place that decides what became of each model proposal:
    a `proposed` event whose actor begins with `model:` and whose annotation's row
    exists. Its answer is the annotation's first decision event after it in
    (occurred_at, event_id) order; it is superseded when another `proposed` event
    (of any actor) comes after it and before its answer, or after it at all when it
    has no answer. Events that cannot be placed (no time or id) take no part. -#}

with

events as (

    select * from {{ ref('stg_app__annotation_events') }}

    where annotation_id is not null
        and occurred_at is not null
        and event_id is not null
        and {{ occurred_by_as_of('occurred_at') }}

),

annotation_ids as (

    select distinct annotation_id from {{ ref('stg_app__annotations') }}

    where annotation_id is not null

),

-- Each event's place in its annotation's (occurred_at, event_id) order; an event
-- recorded twice (the same id and time) shares its place with its copy.
placed as {{ inline_cte() }} (

    select
        events.*,
        dense_rank() over (partition by annotation_id order by occurred_at, event_id) as place

    from events

),

places as (

    select
        annotation_id,
        place,
        max(case when event_type in ('accepted', 'rejected', 'deleted') then 1 else 0 end) as has_decision,
        max(case when event_type = 'proposed' then 1 else 0 end) as has_proposal

    from placed

    group by annotation_id, place

),

-- From each place, the next place (strictly after it) holding a decision, and the
-- next holding a proposal of anyone. Windows over one row per place, not pairs of
-- events: the cost stays linear in the log, whatever the planner thinks of it.
following as (

    select
        annotation_id,
        place,
        min(case when has_decision = 1 then place end) over (
            partition by annotation_id order by place rows between 1 following and unbounded following
        ) as answer_place,
        min(case when has_proposal = 1 then place end) over (
            partition by annotation_id order by place rows between 1 following and unbounded following
        ) as next_proposal_place

    from places

),

decisions_by_place as (

    select * from placed where event_type in ('accepted', 'rejected', 'deleted')

),

-- The decision at a place; among exact duplicates there, the deciding rule's
-- tie-break (doubt first, then the binary order of label and actor).
decision_at_place as (

    {{ first_per_group(
        'decisions_by_place',
        group_by='annotation_id, place',
        order_by=[
            "case event_type when 'deleted' then 3 when 'rejected' then 2 else 1 end desc",
            binary_order('label') ~ ' desc nulls last',
            binary_order('actor') ~ ' desc nulls last',
        ],
    ) }}

),

model_proposals as (

    select placed.*

    from placed

    inner join annotation_ids
        on placed.annotation_id = annotation_ids.annotation_id

    where placed.event_type = 'proposed'
        and substr(placed.actor, 1, 6) = 'model:'

),

final as (

    select
        model_proposals.event_id,
        model_proposals.annotation_id,
        model_proposals.actor,
        model_proposals.label as proposed_label,
        model_proposals.occurred_at as proposed_at,
        answers.event_id as answer_event_id,
        answers.event_type as answer_type,
        answers.label as answer_label,
        following.next_proposal_place is not null
            and (following.answer_place is null or following.next_proposal_place < following.answer_place)
            as is_superseded

    from model_proposals

    inner join following
        on model_proposals.annotation_id = following.annotation_id
        and model_proposals.place = following.place

    left join decision_at_place as answers
        on following.annotation_id = answers.annotation_id
        and following.answer_place = answers.place

)

select * from final
