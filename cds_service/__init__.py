"""CDS Hooks 2.0 service: evidence-cited advisory cards on hemifacial spasm treatment outcomes.

The application factory is `cds_service.http.app.create_app`.
"""
