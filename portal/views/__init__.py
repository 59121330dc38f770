"""Portal pages, one module per area. Thin: resolve the tenant (portal.access), call selectors and
services, render.

Every object is looked up from ``request.access.tenant``; another tenant's object is a 404 like a missing one.
"""
