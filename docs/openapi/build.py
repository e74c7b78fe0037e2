"""Build relay/openapi.json (served at GET /openapi.json): Twilio's Proxy v1 document (the contract, MIT licensed, kept
verbatim beside this file) plus what Maskline adds. Run: python docs/openapi/build.py
tests/test_openapi.py checks that the app's routes and this document stay in step."""

from __future__ import annotations

import copy
import json
from pathlib import Path

HERE = Path(__file__).parent

SERVICE_EXTENSIONS = {
    "CoolOff": (
        "integer",
        "Maskline: seconds a released (participant, proxy number) pair stays held after its session closes (default 14400).",
    ),
    "AllowedCountries": (
        "string",
        "Maskline: comma-separated ISO 3166 alpha-2 codes of participants allowed (e.g. US,CA); empty allows all.",
    ),
    "CallTimeLimit": ("integer", "Maskline: maximum length of a relayed call, in seconds."),
    "Whisper": ("string", "Maskline: announcement played to the callee before a relayed call connects."),
    "RecordCalls": (
        "boolean",
        "Maskline: record relayed calls (a consent announcement plays to both parties).",
    ),
    "RecordingConsent": ("string", "Maskline: the consent announcement played when RecordCalls is true."),
    "OutOfSessionMessage": (
        "string",
        "Maskline: reply to texts and calls outside a live session when no OutOfSessionCallbackUrl is set.",
    ),
    "HelpMessage": ("string", "Maskline: reply to HELP."),
    "BodyPolicy": ("string", "Maskline: message bodies in the audit log: keep, redact or hash."),
    "TextsPerMinute": (
        "integer",
        "Maskline: texts relayed per minute from one participant number (0: no limit).",
    ),
    "CallsPerHour": (
        "integer",
        "Maskline: calls relayed per hour from one participant number (0: no limit).",
    ),
    "ProxyTextsPerMinute": (
        "integer",
        "Maskline: texts relayed per minute through one proxy number (0: no limit).",
    ),
    "ProxyCallsPerHour": (
        "integer",
        "Maskline: calls relayed per hour through one proxy number (0: no limit).",
    ),
    "ScheduleLateness": (
        "integer",
        "Maskline: seconds a scheduled message may be late (after an outage) and still be sent (default 900); later ones expire.",
    ),
    "MaxParticipants": (
        "integer",
        "Maskline: participants a Session may have, 2 (Twilio's rule, the default) to 50. A text reaches every other participant.",
    ),
    "NamePrefix": (
        "boolean",
        "Maskline: in sessions of more than two, start each relayed text with the sender's FriendlyName (default true).",
    ),
    "FallbackNumber": (
        "string",
        "Maskline: PIN mode. A phone number of this Service (E.164) shared by participants the pool has no "
        "number left for (instead of error 80208): each gets it with a PIN (Participant `pin`); calls and "
        "texts to it find the session by the PIN. Empty turns it off. docs/relay.md.",
    ),
    "WhatsAppWindowMessage": (
        "string",
        "Maskline: the reply to a text that reached no WhatsApp recipient inside WhatsApp's 24-hour window.",
    ),
    "RateLimitMessage": (
        "string",
        "Maskline: the reply (or, for a call, what is said) when a limit refuses a text or call.",
    ),
}

AUDIT_PATHS = {
    "/v1/Audit/Events": "Query the audit log (keys with the audit permission; a key scoped to Services sees only theirs).",
    "/v1/Audit/Events.csv": "Stream the same query as CSV.",
    "/v1/Audit/Events.jsonl": "Stream the same query as JSON Lines.",
}
AUDIT_QUERY = [
    "Service",
    "Session",
    "Number",
    "ProxyNumber",
    "Since",
    "Until",
    "Type",
    "PageSize",
    "PageToken",
]

WEBHOOKS = {
    "/twilio/sms": "Twilio messaging webhook of every pool number (signed with X-Twilio-Signature).",
    "/twilio/voice": "Twilio voice webhook of every pool number (signed with X-Twilio-Signature).",
}
OPS = {
    "/healthz": "Liveness.",
    "/readyz": "Readiness: Redis and Postgres reachable.",
    "/openapi.json": "This document (unauthenticated), its servers set to MASKLINE_PUBLIC_URL.",
    "/metrics": "Prometheus metrics (text format); with MASKLINE_METRICS_TOKEN set, send Authorization: Bearer <token>.",
}
TARGET = HERE.parent.parent / "relay" / "openapi.json"


def build() -> dict:
    doc = copy.deepcopy(json.loads((HERE / "twilio_proxy_v1.json").read_text()))
    doc["info"]["title"] = "Maskline - Twilio Proxy v1 compatible API"
    doc["info"]["description"] = (
        "Maskline's REST API: wire-compatible with Twilio Proxy v1 (the paths, fields and enums of Twilio's "
        "published document, MIT licensed, see twilio_proxy_v1.LICENSE) plus the Maskline extensions marked "
        "'Maskline:'. Error codes: docs/errors.md."
    )
    doc["servers"] = [{"url": "http://127.0.0.1:8080", "description": "MASKLINE_PUBLIC_URL"}]
    for path in ("/v1/Services", "/v1/Services/{Sid}"):
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"][
            "schema"
        ]
        for name, (kind, text) in SERVICE_EXTENSIONS.items():
            schema["properties"][name] = {"type": kind, "description": text}
    service = doc["components"]["schemas"]["proxy.v1.service"]["properties"]
    service["cool_off"] = {"type": "integer", "description": SERVICE_EXTENSIONS["CoolOff"][1]}
    service["allowed_countries"] = {"type": "array", "items": {"type": "string"}, "nullable": True}
    participant = doc["components"]["schemas"]["proxy.v1.service.session.participant"]["properties"]
    participant["pin"] = {
        "type": "string",
        "nullable": True,
        "description": "Maskline: the participant's PIN on the Service's shared FallbackNumber (its "
        "proxy_identifier) when the pool had no number left for it; null otherwise.",
    }
    service["options"] = {
        "type": "object",
        "description": "Maskline: relay and audit options of the Service.",
    }
    for path, text in AUDIT_PATHS.items():
        doc["paths"][path] = {
            "get": {
                "summary": text,
                "operationId": "Audit" + path.rsplit("/", 1)[1].replace(".", ""),
                "parameters": [{"name": q, "in": "query", "schema": {"type": "string"}} for q in AUDIT_QUERY],
                "responses": {
                    "200": {"description": "events"},
                    "403": {"description": "no audit permission"},
                },
            }
        }
    _blocked(doc)
    _scheduled(doc)
    numbers = doc["paths"]["/v1/Services/{ServiceSid}/PhoneNumbers"]["post"]["requestBody"]["content"]
    numbers["application/x-www-form-urlencoded"]["schema"]["properties"]["WhatsApp"] = {
        "type": "boolean",
        "description": "Maskline: the number is a WhatsApp sender of the account; WhatsApp participants "
        "(whatsapp:+E164) get numbers added with WhatsApp=true. Shown as capabilities.whatsapp.",
    }
    for path, text in WEBHOOKS.items():
        doc["paths"][path] = {
            "post": {
                "summary": text,
                "operationId": "Webhook" + path.rsplit("/", 1)[1].title(),
                "security": [],
                "responses": {
                    "200": {"description": "TwiML", "content": {"application/xml": {}}},
                    "403": {"description": "bad signature"},
                },
            }
        }
    for path, text in OPS.items():
        doc["paths"][path] = {
            "get": {
                "summary": text,
                "operationId": path.strip("/").replace(".", "").title(),
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        }
    return doc


BLOCKED_ENTRY = {
    "type": "object",
    "description": "Maskline: an identifier on a Service's block list.",
    "properties": {
        "sid": {"type": "string", "description": "BL followed by 32 hex digits"},
        "service_sid": {"type": "string"},
        "account_sid": {"type": "string"},
        "identifier": {"type": "string", "description": "E.164"},
        "date_created": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "format": "uri"},
    },
}


def _blocked(doc: dict) -> None:
    """Maskline's block list: /v1/Services/{ServiceSid}/Blocked[/{Sid}] (Sid or the identifier)."""
    service = {"name": "ServiceSid", "in": "path", "required": True, "schema": {"type": "string"}}
    entry = {"application/json": {"schema": {"$ref": "#/components/schemas/maskline.blocked"}}}
    doc["components"]["schemas"]["maskline.blocked"] = BLOCKED_ENTRY
    doc["paths"]["/v1/Services/{ServiceSid}/Blocked"] = {
        "get": {
            "summary": "Maskline: list the Service's blocked identifiers (paged like every list).",
            "operationId": "ListBlocked",
            "parameters": [service],
            "responses": {"200": {"description": "blocked identifiers (key `blocked`)"}},
        },
        "post": {
            "summary": "Maskline: block an identifier: it can neither join a session (89003) nor reach anyone.",
            "operationId": "CreateBlocked",
            "parameters": [service],
            "requestBody": {
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["Identifier"],
                            "properties": {"Identifier": {"type": "string", "description": "E.164"}},
                        }
                    }
                }
            },
            "responses": {"201": {"description": "blocked", "content": entry}},
        },
    }
    sid = {"name": "Sid", "in": "path", "required": True, "schema": {"type": "string"}}
    doc["paths"]["/v1/Services/{ServiceSid}/Blocked/{Sid}"] = {
        "get": {
            "summary": "Maskline: fetch a blocked identifier by its BL sid or the identifier itself.",
            "operationId": "FetchBlocked",
            "parameters": [service, sid],
            "responses": {"200": {"description": "the entry", "content": entry}},
        },
        "delete": {
            "summary": "Maskline: unblock an identifier.",
            "operationId": "DeleteBlocked",
            "parameters": [service, sid],
            "responses": {"204": {"description": "unblocked"}},
        },
    }


def _scheduled(doc: dict) -> None:
    """Maskline's scheduled messages: SendAt on MessageInteractions, and the ScheduledMessages list."""
    create = doc["paths"][
        "/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants/{ParticipantSid}/MessageInteractions"
    ]
    form = create["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    form["properties"]["SendAt"] = {
        "type": "string",
        "description": "Maskline: send later, at this time (ISO 8601 or epoch seconds, within a year); the answer is "
        "then a ScheduledMessage (status scheduled). Sooner than a second from now: sent at once.",
    }
    form["properties"]["ContentSid"] = {
        "type": "string",
        "description": "Maskline: send a Content API template (HX...) instead of Body/MediaUrl, as Twilio's Messages "
        "API does; what WhatsApp requires outside its 24-hour window (free-form then gets 63016).",
    }
    form["properties"]["ContentVariables"] = {
        "type": "string",
        "description": 'Maskline: the template\'s variables, a JSON object (e.g. {"1": "10:00"}); needs ContentSid.',
    }
    path = {"in": "path", "required": True, "schema": {"type": "string"}}
    service, session = {"name": "ServiceSid", **path}, {"name": "SessionSid", **path}
    doc["components"]["schemas"]["maskline.scheduled_message"] = {
        "type": "object",
        "description": "Maskline: a text scheduled for one participant; canceled when its session closes, expires or "
        "is deleted, when the participant is removed or replies STOP.",
        "properties": {
            name: {"type": "string", "nullable": True}
            for name in (
                "sid",
                "account_sid",
                "service_sid",
                "session_sid",
                "participant_sid",
                "body",
                "content_sid",
                "content_variables",
                "send_at",
                "status",
                "reason",
                "interaction_sid",
                "date_created",
                "date_updated",
                "url",
            )
        },
    }
    entry = {"application/json": {"schema": {"$ref": "#/components/schemas/maskline.scheduled_message"}}}
    base = "/v1/Services/{ServiceSid}/Sessions/{SessionSid}/ScheduledMessages"
    doc["paths"][base] = {
        "get": {
            "summary": "Maskline: the session's scheduled messages (any status), by send time.",
            "operationId": "ListScheduledMessage",
            "parameters": [service, session],
            "responses": {"200": {"description": "key `scheduled_messages`"}},
        }
    }
    sid = {"name": "Sid", **path}
    doc["paths"][base + "/{Sid}"] = {
        "get": {
            "summary": "Maskline: fetch a scheduled message.",
            "operationId": "FetchScheduledMessage",
            "parameters": [service, session, sid],
            "responses": {"200": {"description": "the message", "content": entry}},
        },
        "delete": {
            "summary": "Maskline: cancel a scheduled message that has not gone out (89004 otherwise).",
            "operationId": "DeleteScheduledMessage",
            "parameters": [service, session, sid],
            "responses": {"204": {"description": "canceled"}},
        },
    }


if __name__ == "__main__":
    TARGET.write_text(json.dumps(build(), indent=1) + "\n")
    print("wrote", TARGET)
