"""What the billing admin tests do as a browser and an agent would: post a LiveKit session of usage, post back
a rendered admin form, read the messages a page shows."""

from tests import livekit_samples as samples


def post_session(agent_client, name="pipeline_deepgram_openai_cartesia", session_id="call-1"):
    response = agent_client.post(
        "/api/v1/livekit/metrics",
        {"session_id": session_id, "metrics": samples.shifted_metrics(samples.load(name))},
    )
    assert response.status_code == 200, response.content


def form_data(response) -> dict:
    """The body a browser would post back from a rendered admin change form, inlines included."""
    data = {}

    def add(form):
        for bound in form:
            if bound.field.disabled:
                continue  # browsers do not send disabled inputs
            value = bound.value()
            if value is None or value is False:
                continue
            data[bound.html_name] = "on" if value is True else str(value)

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


def add_inline_row(data: dict, prefix: str, values: dict) -> dict:
    """What a browser posts after "Add another …" on an inline and filling the new row with ``values``."""
    n = int(data[f"{prefix}-TOTAL_FORMS"])
    data[f"{prefix}-TOTAL_FORMS"] = str(n + 1)
    data.update({f"{prefix}-{n}-{name}": value for name, value in values.items()})
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]
