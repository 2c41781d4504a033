{#- CONTRACT §7.2: a model's actor is `model:<model_name>@<version>`. The name is
    the text after `model:` up to the last `@`, the version the text after it;
    without an `@` the whole rest is the name and the version is null. `actor` is
    an expression whose value begins with `model:` (its first 6 characters are
    skipped unread). Shared by proposal_outcomes and review_queue. -#}

{#- The text after the prefix `model:`. -#}
{% macro model_reference_of_actor(actor) -%}
    substr({{ actor }}, 7)
{%- endmacro %}

{% macro model_name_of_actor(actor) -%}
    {%- set reference = model_reference_of_actor(actor) -%}
    case
        when position('@' in {{ reference }}) = 0 then {{ reference }}
        else left({{ reference }}, length({{ reference }}) - position('@' in reverse({{ reference }})))
    end
{%- endmacro %}

{% macro model_version_of_actor(actor) -%}
    {%- set reference = model_reference_of_actor(actor) -%}
    case
        when position('@' in {{ reference }}) = 0 then null
        else right({{ reference }}, position('@' in reverse({{ reference }})) - 1)
    end
{%- endmacro %}
