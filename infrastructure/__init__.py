"""The Pulumi program that provisions clickstream on Aiven."""
