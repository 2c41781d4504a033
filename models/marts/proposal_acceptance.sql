{#- CONTRACT §7.3: per (actor, proposed_label), how the proposals fared; a null
    proposed label is one group. acceptance_rate counts only the proposals people
    decided on: accepted / (accepted + corrected + rejected), null when none. -#}

with

outcomes as (

    select * from {{ ref('proposal_outcomes') }}

),

counted as (

    select
        actor,
        min(model_name) as model_name,
        min(model_version) as model_version,
        proposed_label,
        count(*) as proposals,
        sum(case when outcome = 'accepted' then 1 else 0 end) as accepted,
        sum(case when outcome = 'corrected' then 1 else 0 end) as corrected,
        sum(case when outcome = 'rejected' then 1 else 0 end) as rejected,
        sum(case when outcome = 'deleted' then 1 else 0 end) as deleted,
        sum(case when outcome = 'pending' then 1 else 0 end) as pending,
        sum(case when outcome = 'superseded' then 1 else 0 end) as superseded

    from outcomes

    group by actor, proposed_label

),

final as (

    select
        actor,
        model_name,
        model_version,
        proposed_label,
        cast(proposals as {{ dbt.type_bigint() }}) as proposals,
        cast(accepted as {{ dbt.type_bigint() }}) as accepted,
        cast(corrected as {{ dbt.type_bigint() }}) as corrected,
        cast(rejected as {{ dbt.type_bigint() }}) as rejected,
        cast(deleted as {{ dbt.type_bigint() }}) as deleted,
        cast(pending as {{ dbt.type_bigint() }}) as pending,
        cast(superseded as {{ dbt.type_bigint() }}) as superseded,
        case
            when accepted + corrected + rejected = 0 then null
            else cast(accepted as double precision) / (accepted + corrected + rejected)
        end as acceptance_rate

    from counted

)

select * from final
