"""The BertServer operator: kopf handlers reconciling BertServers into Deployments and Services."""
