{#- An extension of CONTRACT §7.3 for reviewers who open whole PDFs: one row per
    document with at least one segment in review_queue. mean_uncertainty is the
    mean of (1 - confidence) over its queued segments that have a proposal (null
    without any). priority 1 is opened first: the most uncertain document first,
    documents without a proposal last, then document_id in code-point order. -#}

with

review_queue as (

    select * from {{ ref('review_queue') }}

),

documents as (

    select
        document_id,
        count(*) as pending_segments,
        count(model_version_id) as proposed_segments,
        avg(case when model_version_id is not null then 1 - confidence end) as mean_uncertainty,
        min(case when model_version_id is not null then confidence end) as min_confidence

    from review_queue

    group by document_id

),

final as (

    select
        document_id,
        cast(pending_segments as {{ dbt.type_bigint() }}) as pending_segments,
        cast(proposed_segments as {{ dbt.type_bigint() }}) as proposed_segments,
        cast(mean_uncertainty as double precision) as mean_uncertainty,
        cast(min_confidence as double precision) as min_confidence,
        cast(row_number() over (
            order by
                mean_uncertainty desc nulls last,
                {{ binary_order('document_id') }} asc
        ) as {{ dbt.type_bigint() }}) as priority

    from documents

)

select * from final
