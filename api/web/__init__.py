"""The staff web pages (issue #7): server-rendered counter and finance desks over the same services as the API.

:data:`api.web.pages.router` serves them under ``/web`` (not in the OpenAPI document).
"""
