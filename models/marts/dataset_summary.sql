with

training_examples as (

    select * from {{ ref('training_examples') }}

),

summary as (

    select
        split,
        label,
        count(*) as examples,
        count(distinct document_id) as documents

    from training_examples

    group by split, label

)

select * from summary
