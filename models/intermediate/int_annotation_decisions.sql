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

-- The rule itself: latest occurred_at, then greatest event_id (the order the app's
-- index provides, docs/DEPLOYMENT.md). Exact duplicates of (occurred_at, event_id)
-- exist only in dirty logs: among them doubt wins (deleted, then rejected, then
-- accepted), then the binary order of label and actor, so every engine picks the
-- same row.
deciding_events as (

    {{ first_per_group(
        'decision_events',
        group_by='annotation_id',
        order_by=[
            'occurred_at desc',
            'event_id desc',
            "case event_type when 'deleted' then 3 when 'rejected' then 2 else 1 end desc",
            binary_order('label') ~ ' desc nulls last',
            binary_order('actor') ~ ' desc nulls last',
        ],
    ) }}

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
