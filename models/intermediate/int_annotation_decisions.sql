{#- The one place that decides which event decides an annotation (CONTRACT §2.1).
    Only accepted, rejected and deleted events decide, spelled exactly so; created,
    proposed and edited never do, and neither does any other event type. With the
    var `as_of`, only events that occurred at or before it decide (macros/as_of.sql). -#}

with

events as (

    select * from {{ ref('stg_app__annotation_events') }}

),

decision_events as (

    select annotation_id, event_id, event_type, label, actor, occurred_at

    from events

    where event_type in ('accepted', 'rejected', 'deleted')
        -- An event without a time or an id cannot be ordered: it decides nothing.
        and annotation_id is not null
        and occurred_at is not null
        and event_id is not null
        -- Point in time (var as_of): events after it have not happened yet.
        and {{ occurred_by_as_of('occurred_at') }}

),

-- The rule itself: latest occurred_at, then greatest event_id. This ordering is
-- the one the app's index provides (docs/DEPLOYMENT.md), so PostgreSQL reads
-- the events in order instead of sorting them.
latest_events as (

    select
        *,
        rank() over (
            partition by annotation_id
            order by occurred_at desc, event_id desc
        ) as recency_rank

    from decision_events

),

latest as (

    select
        *,
        count(*) over (partition by annotation_id) as tied_events

    from latest_events

    where recency_rank = 1

),

-- Exact duplicates of (occurred_at, event_id) exist only in dirty logs. Among
-- them doubt wins (deleted, then rejected, then accepted) and then the binary
-- order of label and actor, so every engine picks the same row. Only the few
-- tied annotations pay for this second ordering.
tie_broken as (

    select
        *,
        row_number() over (
            partition by annotation_id
            order by
                case event_type when 'deleted' then 3 when 'rejected' then 2 else 1 end desc,
                {{ binary_order('label') }} desc nulls last,
                {{ binary_order('actor') }} desc nulls last
        ) as tie_rank

    from latest

    where tied_events > 1

),

deciding_events as (

    select annotation_id, event_id, event_type, label, actor, occurred_at from latest where tied_events = 1

    union all

    select annotation_id, event_id, event_type, label, actor, occurred_at from tie_broken where tie_rank = 1

),

final as (

    select
        annotation_id,
        event_id as deciding_event_id,
        event_type as deciding_event_type,
        label as deciding_label,
        actor as decided_by,
        occurred_at as decided_at

    from deciding_events

)

select * from final
