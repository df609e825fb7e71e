"""A valid profile as text, shared by the loader, matching and CLI tests (each test edits a copy)."""

from __future__ import annotations

VALID_PROFILE = """\
id: carrier-xx-test
name: Test carrier
category: carrier
jurisdiction: VN
description: A carrier for tests.
upstream:
  base_url: ${TEST_CARRIER_URL:-http://127.0.0.1:9999/carrier}
  auth:
    type: bearer
    token: ${TEST_CARRIER_TOKEN}
  timeouts: {connect: 1.0, total: 5.0}
  retries: ${TEST_RETRIES:-1}
limits:
  max_body_bytes: 8192
  rate_per_second: 10
  burst: 20
  max_concurrency: 4
consent_purposes: [location]
routes:
  - id: create-shipment
    method: POST
    path: /shipments/{shipment_id}
    purpose: delivery
    legal_basis: contract
    subject: {from: body, path: recipient.customer_id}
    residency: {value: VN}
    consent: null
    essential: true
    idempotent: false
    unknown_fields: drop
    free_text: redact
    request:
      schema:
        type: object
        required: [order_id, recipient]
        properties:
          order_id: {type: string}
          recipient:
            type: object
            required: [phone]
            properties:
              phone: {type: string}
      body:
        order_id: keep
        recipient.customer_id: drop
        recipient.phone: {pseudonymise: {type: phone, mode: hmac}}
        note: {keep: {free_text: true}}
      path:
        shipment_id: keep
      headers:
        Idempotency-Key: keep
    response:
      body:
        tracking_number: keep
    examples:
      - name: a shipment
        request:
          path: {shipment_id: S-1}
          headers: {Idempotency-Key: k-1}
          body:
            order_id: O-1
            recipient: {customer_id: c-1, phone: "+84912345678", name: An}
            note: "ring twice, my phone is +84912345678"
        expect:
          body:
            order_id: O-1
            recipient: {phone: {$pseudonym: {type: phone, mode: hmac, value: "+84912345678"}}}
            note: "ring twice, my phone is [redacted:phone]"
          path: {shipment_id: S-1}
          query: {}
          headers: {idempotency-key: k-1}
      - name: a bad phone is refused
        request:
          body: {order_id: O-2, recipient: {phone: "12"}}
        expect_error: {status: 422, paths: [recipient.phone]}
  - id: track
    method: GET
    path: /shipments/{shipment_id}/tracking
    purposes: [delivery, support]
    legal_basis: contract
    request:
      path:
        shipment_id: keep
      query:
        lang: keep
"""

ENV = {"TEST_CARRIER_TOKEN": "secret-token-value"}
