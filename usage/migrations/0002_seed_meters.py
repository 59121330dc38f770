from django.db import migrations

# A frozen copy of usage.meters.DEFAULT_METERS as of this migration: later edits to the catalogue in code
# must come with a migration of their own, never by rewriting this one.
METERS = [
    ("llm_input_text_tokens", "token", "uncached text input"),
    ("llm_input_cached_text_tokens", "token", "text input read from the prompt cache"),
    ("llm_input_cache_write_tokens", "token", "input written to the prompt cache (Anthropic)"),
    ("llm_input_audio_tokens", "token", "uncached audio input (realtime models)"),
    ("llm_input_cached_audio_tokens", "token", "cached audio input"),
    ("llm_input_image_tokens", "token", "image input (uncached + cached together)"),
    ("llm_output_text_tokens", "token", "text output, reasoning included"),
    ("llm_output_audio_tokens", "token", "audio output"),
    ("stt_audio_seconds", "second", "audio sent to speech-to-text"),
    ("stt_input_tokens", "token", "token-billed speech-to-text input"),
    ("stt_output_tokens", "token", "token-billed speech-to-text output"),
    ("tts_characters", "character", "characters synthesized"),
    ("tts_audio_seconds", "second", "audio produced by text-to-speech"),
    ("tts_input_tokens", "token", "token-billed text-to-speech input"),
    ("tts_output_tokens", "token", "token-billed text-to-speech output"),
    ("realtime_session_seconds", "second", "connection time of session-billed realtime models"),
    ("session_seconds", "second", "conversation length (for per-minute platform pricing)"),
]


def seed(apps, schema_editor):
    Meter = apps.get_model("usage", "Meter")
    for order, (code, unit, description) in enumerate(METERS):
        Meter.objects.update_or_create(
            code=code, defaults={"unit": unit, "description": description, "display_order": order}
        )


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
