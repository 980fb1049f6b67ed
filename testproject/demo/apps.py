from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "testproject.demo"
    label = "retention_demo"
    verbose_name = "retention_admin demo"
