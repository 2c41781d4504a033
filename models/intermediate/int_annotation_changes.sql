{#- Each annotation's latest change (CONTRACT §7.1): its `created`, `proposed` or
    `edited` event with the greatest (occurred_at, event_id). Event types are
    compared exactly; an event without a time or an id cannot be placed and is no
    change. With the var `as_of`, only events at or before it count. -#}

with

events as (

    select * from {{ ref('stg_app__annotation_events') }}

),

change_events as (

    select annotation_id, event_id, event_type, label, actor, occurred_at

    from events

    where event_type in ('created', 'proposed', 'edited')
        and annotation_id is not null
        and occurred_at is not null
        and event_id is not null
        and {{ occurred_by_as_of('occurred_at') }}

),

-- Only the place (occurred_at, event_id) of the latest change matters downstream;
-- the tie-break below only makes the row that carries it the same on every engine.
latest_changes as (

    {{ first_per_group(
        'change_events',
        group_by='annotation_id',
        order_by=[
            'occurred_at desc',
            'event_id desc',
            binary_order('event_type') ~ ' desc',
            binary_order('label') ~ ' desc nulls last',
            binary_order('actor') ~ ' desc nulls last',
        ],
    ) }}

),

final as (

    select
        annotation_id,
        event_id as changed_event_id,
        event_type as change_type,
        label as changed_label,
        actor as changed_by,
        occurred_at as changed_at

    from latest_changes

)

select * from final
