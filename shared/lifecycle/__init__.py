"""A tenant's life after its data is in: long work as jobs on queues, the export of
everything a tenant owns, cancellation through the 30-day purge and its signed deletion
attestation, blob snapshots, audit retention cuts and the restore drill.

It sits above the domain packages because an export or a purge spans all of them.

May import: `shared.core`, `shared.web`, `shared.audit`, `shared.identity`, `shared.tenancy`,
`shared.records`.
"""
