{#- Fails with one row per document found on both sides of the split. -#}
{% test one_split_per_document(model, document_column='document_id', split_column='split') %}

select
    {{ document_column }} as document_id,
    count(distinct {{ split_column }}) as splits

from {{ model }}

group by {{ document_column }}

having count(distinct {{ split_column }}) > 1

{% endtest %}
