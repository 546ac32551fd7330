-- Password-reset requests wait here until the deliver_mail timer handles them: the HTTP
-- answer then does the same work (one insert) whether or not the account exists, so its
-- timing no longer tells which accounts exist (issue 11, item 8). A row lives only until the
-- next timer run, which deletes it as it claims it (it is a pending request, not a record:
-- the audit event written when it is handled is the record).
CREATE TABLE reset_requests (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_slug text NOT NULL CHECK (length(tenant_slug) <= 63),
    email       text NOT NULL CHECK (length(email) <= 254),
    ip          text CHECK (length(ip) <= 64),
    user_agent  text CHECK (length(user_agent) <= 512),
    request_id  text CHECK (length(request_id) <= 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reset_requests_created ON reset_requests (created_at);
GRANT SELECT, INSERT, DELETE ON reset_requests TO custos_app_rw;
