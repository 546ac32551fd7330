"""The HTTP edge: the endpoint wrapper and its ordered stages, RequestContext, JSON in and
out (input limits), card-data refusal and redaction, request-model building blocks and the
OpenAPI document.

May import: `shared.core`, and the public functions of `shared.identity` (authentication,
throttling) and `shared.audit` (the support-access trail) that the stages call.
"""
