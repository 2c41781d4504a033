{#- CONTRACT §7.2: one row per model proposal event, with what became of it. The
    answer and supersession are decided in int_proposal_answers; here the outcome
    follows the contract's order, and the actor is read as model:<name>@<version>
    (the version after the last `@`; without one, the whole rest is the name:
    macros/model_actor.sql). -#}

with

answers as (

    select * from {{ ref('int_proposal_answers') }}

),

final as (

    select
        event_id,
        annotation_id,
        actor,
        {{ model_name_of_actor('actor') }} as model_name,
        {{ model_version_of_actor('actor') }} as model_version,
        proposed_label,
        proposed_at,
        answer_event_id,
        case
            when is_superseded then 'superseded'
            when answer_event_id is null then 'pending'
            -- Labels compare exactly (CONTRACT §2.3): no trimming, no case folding.
            when answer_type = 'accepted' and answer_label is not null and proposed_label is not null
                and answer_label = proposed_label then 'accepted'
            when answer_type = 'accepted' then 'corrected'
            else answer_type
        end as outcome

    from answers

)

select * from final
