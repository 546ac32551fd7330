"""Regulated content: typed, versioned records (ALCOA+), tenant-defined schemas evaluated
safely, content-addressed attachments, payment methods as gateway tokens, and 21 CFR Part 11
electronic signatures.

May import: `shared.core`, `shared.web`, `shared.audit`, `shared.identity`, `shared.tenancy`.
"""
