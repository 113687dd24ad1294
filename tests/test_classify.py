"""Failure classification: the default table on real error texts, matching rules, config."""

from __future__ import annotations

import socket
import subprocess
from typing import Any, Union

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from massugc_logging.classify import (
    CATEGORIES,
    DEFAULT_RULES,
    MAX_TEXT_CHARS,
    Classification,
    Classifier,
    Rule,
    classify,
    exception_type_names,
)

# (error text or exception, expected category): texts as the app's services report them.
CORPUS: list[tuple[Union[str, BaseException], str]] = [
    # ElevenLabs
    ("status_code: 401, body: {'detail': {'status': 'invalid_api_key', "
     "'message': 'Invalid API key'}}", "authentication"),
    ("status_code: 401, body: {'detail': {'status': 'quota_exceeded', 'message': 'This request "
     "exceeds your quota of 10000. You have 12 credits remaining, while 845 credits are "
     "required for this request.'}}", "rate_limit"),
    ("401 Client Error: Unauthorized for url: https://api.elevenlabs.io/v1/text-to-speech/abc",
     "authentication"),
    ("ElevenLabs TTS generation failed: voice_id 'pNInz6obpgDQGcFmaJgB' not found",
     "audio_generation"),
    ("Text-to-speech request returned empty audio", "audio_generation"),
    ("ElevenLabsError: audio generation failed for voice Adam", "audio_generation"),
    # OpenAI
    ("Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o in organization "
     "org-abc on tokens per min (TPM): Limit 30000, Used 29876, Requested 512.', 'type': "
     "'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}", "rate_limit"),
    ("Error code: 429 - {'error': {'message': 'You exceeded your current quota, please check "
     "your plan and billing details.', 'type': 'insufficient_quota'}}", "rate_limit"),
    ("Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-abc***xyz.', "
     "'type': 'invalid_request_error', 'code': 'invalid_api_key'}}", "authentication"),
    ("Error code: 400 - {'error': {'message': 'Your request was rejected as a result of our "
     "safety system.', 'code': 'content_policy_violation'}}", "script_generation"),
    ("OpenAI script generation failed: empty completion", "script_generation"),
    ("The prompt was flagged by the content filter", "script_generation"),
    # requests / urllib3 / DNS
    ("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.elevenlabs.io', "
     "port=443): Max retries exceeded with url: /v1/text-to-speech/21m00Tcm4TlvDq8ikWAM "
     "(Caused by NewConnectionError('<urllib3.connection.HTTPSConnection object at "
     "0x7f3a2c>: Failed to establish a new connection: [Errno -2] Name or service not "
     "known'))", "network"),
    ("('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))", "network"),
    # A timeout belongs to the stage that timed out; one that names none is the network's,
    # and so is failing to connect at all.
    ("HTTPSConnectionPool(host='api.openai.com', port=443): Read timed out. (read timeout=600)",
     "script_generation"),
    ("TimeoutError: avatar render timed out", "video_generation"),
    ("TimeoutError: lipsync job 8c1f timed out after 900 s", "video_generation"),
    ("asyncio.exceptions.TimeoutError: TTS generation did not finish in 120 s",
     "audio_generation"),
    ("ReadTimeout: HTTPSConnectionPool(host='api.elevenlabs.io', port=443): Read timed out. "
     "(read timeout=60)", "audio_generation"),
    ("openai.APITimeoutError: Request timed out. (script generation for Campaign-07)",
     "script_generation"),
    ("ConnectTimeout: HTTPSConnectionPool(host='api.openai.com', port=443): Max retries "
     "exceeded with url: /v1/chat/completions (Caused by ConnectTimeoutError(<urllib3."
     "connection.HTTPSConnection object at 0x7f2>, 'Connection to api.openai.com timed out. "
     "(connect timeout=10)'))", "network"),
    ("TimeoutError: The read operation timed out", "network"),
    ("504 Gateway Timeout", "network"),
    ("503 Server Error: Service Unavailable for url: "
     "https://massugc-cloud-api.onrender.com/api/desktop/usage/log", "network"),
    ("502 Bad Gateway", "network"),
    ("[Errno -3] Temporary failure in name resolution", "network"),
    ("HTTP Error 429: Too Many Requests", "rate_limit"),
    ("Request failed with status code 401", "authentication"),
    # Google Cloud Storage / S3
    # A 403 from a storage upload is the upload's problem (bucket rights, an expired or
    # wrong signed URL), not the user's key.
    ("403 POST https://storage.googleapis.com/upload/storage/v1/b/massugc-renders/o?uploadType"
     "=multipart: {\"error\": {\"code\": 403, \"message\": \"svc@proj.iam.gserviceaccount.com "
     "does not have storage.objects.create access to the Google Cloud Storage object.\"}}",
     "storage_upload"),
    ("Upload to https://storage.googleapis.com/massugc-renders/Campaign-03.mp4?[REDACTED] "
     "failed: 403 Forbidden", "storage_upload"),
    ("403 Client Error: Forbidden for url: https://massugc-renders.s3.amazonaws.com/renders/"
     "x.mp4?[REDACTED]", "storage_upload"),
    ("<Error><Code>AccessDenied</Code><Message>Request has expired</Message><Expires>"
     "2026-12-01T10:00:00Z</Expires></Error>", "storage_upload"),
    ("<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
     "does not match the signature you provided.</Message></Error> (PUT to signed URL)",
     "storage_upload"),
    ("googleapiclient.errors.HttpError: <HttpError 403 when requesting https://www.googleapis."
     "com/upload/drive/v3/files?[REDACTED] returned \"The user does not have sufficient "
     "permissions for this file.\">", "storage_upload"),
    ("<HttpError 403 when requesting https://www.googleapis.com/upload/drive/v3/files?"
     "[REDACTED] returned \"The user's Drive storage quota has been exceeded.\". Details: "
     "\"[{'domain': 'usageLimits', 'reason': 'storageQuotaExceeded'}]\">", "storage_upload"),
    ("Google Drive upload failed: Resumable upload session expired (HTTP 404)",
     "storage_upload"),
    ("403 Forbidden", "authentication"),
    ("Error code: 403 - {'error': {'message': 'Project proj_abc does not have access to model "
     "gpt-4o', 'type': 'invalid_request_error'}}", "authentication"),
    ("Upload failed: could not PUT to signed URL (status 400)", "storage_upload"),
    ("404 POST https://storage.googleapis.com/upload/storage/v1/b/missing/o: The specified "
     "bucket does not exist.", "storage_upload"),
    ("S3UploadFailedError: Failed to upload /tmp/x.mp4 to renders/x.mp4: An error occurred "
     "(NoSuchBucket)", "storage_upload"),
    # local files and resources
    ("[Errno 13] Permission denied: '/Users/jane/Movies/out.mp4'", "file_system"),
    ("[Errno 2] No such file or directory: '/Users/jane/assets/avatar.mp4'", "file_system"),
    ("ffmpeg -i /Users/jane/voice_12.mp3 -i avatar.mp4 out.mp4\n"
     "/Users/jane/voice_12.mp3: No such file or directory", "file_system"),
    ("[Errno 28] No space left on device: '/tmp/render/out.mp4'", "system_resources"),
    ("OSError: [Errno 122] Disk quota exceeded", "system_resources"),
    ("[Errno 24] Too many open files", "system_resources"),
    ("Cannot allocate memory", "system_resources"),
    ("ffmpeg exited with code -9: Killed", "system_resources"),
    # ffmpeg and rendering
    ("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x7f9b1c004c00] moov atom not found\n"
     "/tmp/avatar.mp4: Invalid data found when processing input", "video_generation"),
    ("Command '['ffmpeg', '-y', '-i', 'voice.mp3', '-i', 'avatar.mp4', 'out.mp4']' returned "
     "non-zero exit status 1.", "video_generation"),
    ("[libx264 @ 0x55d0c] Error while opening encoder for output stream #0:0 - maybe incorrect "
     "parameters such as bit_rate, rate, width or height", "video_generation"),
    ("Unknown encoder 'libfdk_aac'", "video_generation"),
    ("Lipsync render failed for avatar job 42", "video_generation"),
    ("Avatar render failed for ~/Videos/MassUGC/Campaign-04/avatar.mp4: lipsync model returned "
     "no frames (render node 2 busy)", "video_generation"),
    ("ffmpeg version 6.1 Copyright (c) 2000-2023\n  built with gcc 12\nInput #0, mov,mp4,m4a, "
     "from '~/Videos/avatar.mp4':\n  Duration: 00:00:12.04\n[aac @ 0x5581] Too many bits "
     "8832 > 6144 per frame requested\nError while decoding stream #0:1: Invalid data found "
     "when processing input\nConversion failed!", "video_generation"),
    ("ElevenLabs API error 422: {'detail': {'status': 'voice_not_found', 'message': 'A voice "
     "with the voice_id 21m00Tcm4TlvDq8ikWAM was not found.'}}", "audio_generation"),
    ("status_code: 429, body: {'detail': {'status': 'too_many_concurrent_requests', 'message': "
     "'Too many concurrent requests for this model.'}}", "rate_limit"),
    ("googleapiclient.errors.HttpError: <HttpError 403 when requesting https://www.googleapis."
     "com/drive/v3/files returned \"User rate limit exceeded.\". Details: \"[{'reason': "
     "'userRateLimitExceeded'}]\">", "rate_limit"),
    ("MemoryError: Unable to allocate 3.2 GiB for an array with shape (1920, 1080, 3, 540)",
     "system_resources"),
    ("ffmpeg was killed by the OS (out of memory) while rendering Campaign-12",
     "system_resources"),
    ("[Errno 28] No space left on device: '~/Library/Caches/MassUGC/render_0042.mp4'",
     "system_resources"),
    ("API key not valid. Please pass a valid API key. [reason: API_KEY_INVALID]",
     "authentication"),
    ("openai.AuthenticationError: Error code: 401 - {'error': {'message': 'Incorrect API key "
     "provided: sk-proj-********'}}", "authentication"),
    ("Script generation returned an empty script for product Glow Serum",
     "script_generation"),
    # exceptions
    (MemoryError(), "system_resources"),
    (PermissionError(13, "Permission denied", "/Users/jane/out.mp4"), "file_system"),
    (FileNotFoundError(2, "No such file or directory", "ffmpeg"), "file_system"),
    (OSError(28, "No space left on device"), "system_resources"),
    (TimeoutError("The read operation timed out"), "network"),
    (socket.gaierror(-2, "Name or service not known"), "network"),
    (requests.exceptions.ConnectionError("HTTPSConnectionPool(host='x'): Max retries"), "network"),
    (requests.exceptions.ReadTimeout("Read timed out."), "network"),
    (subprocess.TimeoutExpired(["ffmpeg", "-i", "a.mp4"], 600), "video_generation"),
    # nothing recognisable
    ("Something went wrong", "unknown"),
    ("", "unknown"),
    ("measured 40 watts on the invoice", "unknown"),
]


@pytest.mark.parametrize(("error", "expected"), CORPUS, ids=[repr(e)[:48] for e, _ in CORPUS])
def test_corpus_is_classified_as_support_expects(
    error: Union[str, BaseException], expected: str
) -> None:
    """Each realistic error lands in the category a support engineer would pick."""
    assert classify(error).category == expected


def test_corpus_is_large_and_covers_every_category() -> None:
    """At least 40 error texts from the app's workflows, and every default category."""
    texts = [error for error, _ in CORPUS if isinstance(error, str) and error]
    assert len(texts) >= 40
    assert {expected for _, expected in CORPUS} == set(CATEGORIES)
    lowered = " ".join(texts).lower()
    for source in ("ffmpeg", "elevenlabs", "openai", "lipsync", "storage.googleapis.com",
                   "drive", "no space left", "memory", "rate limit", "api key"):
        assert source in lowered, source


def test_default_rules_use_only_documented_categories() -> None:
    """The default table speaks only the documented category names."""
    categories = [rule.category for rule in DEFAULT_RULES]
    assert set(categories) <= set(CATEGORIES) - {"unknown"}
    for rule in DEFAULT_RULES:
        assert set(rule.yields_to) <= set(CATEGORIES) - {"unknown"}


@pytest.mark.parametrize(
    ("category", "retryable"),
    [("authentication", False), ("rate_limit", True), ("network", True), ("unknown", False)],
)
def test_retryable_follows_the_category(category: str, retryable: bool) -> None:
    """Auth failures are permanent; rate limits and network failures are worth retrying."""
    texts = {"authentication": "401 Unauthorized", "rate_limit": "429 Too Many Requests",
             "network": "Connection reset by peer", "unknown": "odd"}
    assert classify(texts[category]) == Classification(category, retryable)


def test_subclass_matches_its_base_through_the_mro() -> None:
    """A subclass of TimeoutError is classified as TimeoutError is."""

    class RenderServiceTimeout(TimeoutError):
        pass

    assert classify(RenderServiceTimeout("render queue")).category == "network"


def test_requests_exception_matches_through_its_mro() -> None:
    """requests' ConnectTimeout is found via its bases, whatever its message."""
    assert classify(requests.exceptions.ConnectTimeout("boom")).category == "network"


def test_dotted_name_matches_a_class_re_exported_from_a_private_module() -> None:
    """``openai.RateLimitError`` matches a class defined in ``openai._exceptions``."""
    rate_limit_error = type("RateLimitError", (Exception,), {"__module__": "openai._exceptions"})
    assert classify(rate_limit_error("Error code: 400")).category == "rate_limit"


def test_dotted_name_does_not_match_another_package() -> None:
    """A dotted rule name does not match a same-named class from another package."""
    ours = type("InternalServerError", (Exception,), {"__module__": "openai._exceptions"})
    other = type("InternalServerError", (Exception,), {"__module__": "mylib.errors"})
    assert classify(ours("nothing to see")).category == "network"
    assert classify(other("nothing to see")).category == "unknown"


def test_captured_type_names_work_without_the_exception() -> None:
    """Type names captured earlier classify as the exception itself would."""
    names = exception_type_names(PermissionError(13, "denied"))
    assert classify(exc_type_names=names, text="[Errno 13] denied").category == "file_system"
    assert classify(exc_type_names=["builtins.MemoryError"]).category == "system_resources"
    assert classify(exc_type_names=["TimeoutError"]).category == "network"


def test_exception_type_names_lists_the_mro_qualified() -> None:
    """The captured names are ``module.qualname`` for the class and its bases, not object."""
    names = exception_type_names(requests.exceptions.ReadTimeout())
    assert names[0] == "requests.exceptions.ReadTimeout"
    assert "requests.exceptions.Timeout" in names
    assert "builtins.OSError" in names
    assert "builtins.object" not in names


def test_exception_types_win_over_keywords_of_earlier_rules() -> None:
    """The type pass runs over all rules before any keyword is looked at."""
    assert classify(TimeoutError("quota exceeded")).category == "network"
    assert classify(FileNotFoundError("ffmpeg")).category == "file_system"


def test_text_and_error_are_combined() -> None:
    """Text given alongside an error is examined too."""
    assert classify(RuntimeError("job failed"), text="moov atom not found").category == (
        "video_generation")


def test_keywords_match_whole_words_only() -> None:
    """'tts' does not match inside 'watts', nor 'voice' inside 'invoice'."""
    assert classify("watts").category == "unknown"
    assert classify("invoice").category == "unknown"
    assert classify("TTS failed").category == "audio_generation"
    assert classify("app.tts.client: boom").category == "audio_generation"


def test_keyword_separators_match_punctuation_runs() -> None:
    """'rate limit' matches 'rate_limit_exceeded' and 'Rate-Limit'."""
    assert classify("code: rate_limit_exceeded").category == "rate_limit"
    assert classify("Rate-Limit hit").category == "rate_limit"


def test_star_lifts_the_word_boundary() -> None:
    """A trailing '*' lets a keyword match the start of a longer word."""
    classifier = Classifier([Rule("video_generation", False, keywords=("runway*",))])
    assert classifier.classify("RunwayMLError: 500").category == "video_generation"
    strict = Classifier([Rule("video_generation", False, keywords=("runway",))])
    assert strict.classify("RunwayMLError: 500").category == "unknown"


def test_only_the_first_8_kib_of_text_is_examined() -> None:
    """A keyword past the cap is not seen, so classification cost is bounded."""
    padding = "x " * (MAX_TEXT_CHARS // 2)
    assert classify(padding + "connection reset").category == "unknown"
    assert classify("connection reset " + padding * 10).category == "network"


def test_user_rules_come_before_the_defaults() -> None:
    """A config rule wins over a default rule that would also match."""
    classifier = Classifier.from_config(
        [{"category": "render_farm", "retryable": True, "keywords": ["render farm"]}]
    )
    result = classifier.classify("render farm: connection reset by peer")
    assert result == Classification("render_farm", True)
    assert classifier.classify("connection reset by peer").category == "network"


def test_user_type_rules_come_before_default_type_rules() -> None:
    """A config exception type wins over the defaults' TimeoutError rule."""
    classifier = Classifier.from_config(
        [{"category": "video_generation", "exception_types": "TimeoutError"}]
    )
    assert classifier.classify(TimeoutError()).category == "video_generation"


def test_without_defaults_only_user_rules_apply() -> None:
    """extend_defaults=False leaves the user's rules alone in the table."""
    classifier = Classifier.from_config(
        [{"category": "network", "retryable": True, "keywords": "flaky"}], extend_defaults=False
    )
    assert classifier.classify("flaky link").category == "network"
    assert classifier.classify("Connection reset by peer").category == "unknown"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("network", "rules: must be a list"),
        ([42], "rules[0]: must be a mapping"),
        ([{"keywords": ["x"]}], "rules[0].category: missing"),
        ([{"category": "Network!", "keywords": ["x"]}], "rules[0].category:"),
        ([{"category": "network", "keyword": ["x"]}], "rules[0].keyword: unknown field"),
        ([{"category": "network", "retryable": "yes", "keywords": ["x"]}],
         "rules[0].retryable:"),
        ([{"category": "network", "keywords": 5}], "rules[0].keywords: must be a string"),
        ([{"category": "network", "keywords": ["ok", 5]}], "rules[0].keywords: 5 is not"),
        ([{"category": "network", "keywords": ["time*out"]}], "rules[0].keywords: 'time*out'"),
        ([{"category": "network", "keywords": ["--"]}], "rules[0].keywords: '--'"),
        ([{"category": "network", "exception_types": ["not a type"]}],
         "rules[0].exception_types: 'not a type'"),
        ([{"category": "network"}], "rules[0].exception_types/keywords"),
        ([{"category": "ok", "keywords": "x"}, {"category": "network", "keywords": []}],
         "rules[1].exception_types/keywords"),
    ],
)
def test_from_config_rejects_bad_entries_naming_index_and_field(
    rules: Any, message: str
) -> None:
    """A bad config entry raises ValueError that says which entry and which field."""
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("*", r"\*")):
        Classifier.from_config(rules)


def test_rule_with_a_single_string_is_rejected() -> None:
    """Rule(keywords="abc") would match letters one by one; it is refused instead."""
    with pytest.raises(ValueError, match=r"rules\[0\]\.keywords"):
        Classifier([Rule("network", True, keywords="abc")])  # type: ignore[arg-type]


def test_from_config_accepts_single_strings_and_defaults_retryable_to_false() -> None:
    """YAML shorthand: a lone string for a list; retryable omitted means False."""
    classifier = Classifier.from_config([{"category": "custom", "keywords": "kaboom"}])
    assert classifier.classify("KABOOM") == Classification("custom", False)
    assert classifier.rules[0] == Rule("custom", False, (), ("kaboom",))


def test_broken_str_does_not_break_classification() -> None:
    """An exception whose __str__ raises is still classified by its type."""

    class Nasty(ConnectionError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert classify(Nasty()).category == "network"


@given(st.one_of(st.none(), st.text(max_size=20_000)), st.lists(st.text(max_size=40)),
       st.text(max_size=200))
def test_classify_never_raises(error: Any, names: list[str], text: str) -> None:
    """Arbitrary text, names or None always yield a known category."""
    result = classify(error, exc_type_names=names, text=text)
    assert result.category in CATEGORIES
    assert isinstance(result.retryable, bool)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
def test_classification_ignores_case(text: str) -> None:
    """Upper-casing ASCII text never changes the verdict."""
    assert classify(text) == classify(text.upper())


@given(st.from_regex(r"[a-z][a-z0-9]{2,15}", fullmatch=True), st.text(max_size=100))
def test_a_user_keyword_is_found_as_a_word_anywhere(word: str, noise: str) -> None:
    """A user keyword surrounded by spaces is found whatever text surrounds it."""
    classifier = Classifier.from_config([{"category": "custom", "keywords": [word]}])
    assert classifier.classify(f"{noise} {word.upper()} {noise}").category == "custom"


def test_a_timeout_raised_by_a_stage_belongs_to_that_stage() -> None:
    """TimeoutError from rendering, lip-sync, TTS or script generation names its stage, not
    the network, and is not marked retryable as a network blip would be."""
    assert classify(TimeoutError("avatar render timed out")) == Classification(
        "video_generation", False)
    assert classify(TimeoutError("lipsync did not finish")).category == "video_generation"
    assert classify(TimeoutError("TTS request")).category == "audio_generation"
    assert classify(TimeoutError("script generation")).category == "script_generation"
    assert classify(TimeoutError("waiting for a lock")) == Classification("network", True)


def test_a_403_from_a_storage_upload_is_a_storage_upload_failure() -> None:
    """A signed URL refused with 403 is not the user's key; a bare 403 still is."""
    assert classify("PUT to signed URL failed: 403 Forbidden") == Classification(
        "storage_upload", True)
    assert classify("403 Forbidden").category == "authentication"
    assert classify("401 Unauthorized uploading to bucket renders").category == "authentication"


def test_yields_to_can_be_configured() -> None:
    """A configured rule may yield to categories whose keywords are also in the text."""
    classifier = Classifier.from_config(
        [{"category": "queueing", "keywords": ["queued"], "yields_to": "render_farm"},
         {"category": "render_farm", "keywords": ["render node"]}],
        extend_defaults=False)
    assert classifier.classify("queued for 30 s on render node 4").category == "render_farm"
    assert classifier.classify("queued for 30 s").category == "queueing"
    with pytest.raises(ValueError, match=r"rules\[0\]\.yields_to"):
        Classifier.from_config([{"category": "x", "keywords": "y", "yields_to": ["Bad Name"]}])
