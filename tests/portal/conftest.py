import pytest


@pytest.fixture
def owner_client(world, client):
    client.force_login(world.users[0])
    return client
