from agent.service.daemon import Agent


async def test_echo_job_through_intake_completes(agent: Agent) -> None:
    submission = await agent.intake.submit(
        {
            "version": "1.0",
            "job_id": "echo-1",
            "kind": "VMOperation",
            "operation": "system.echo",
            "payload": {"type": "system.echo.v1", "data": {"m": 1}},
        },
        transport="test",
    )
    assert submission.created
    with agent.intake.events() as sub:
        async for event in sub.receive:
            if event["type"] == "status" and event["data"]["status"] == "Completed":
                break
    assert await agent.intake.result("echo-1") == {"m": 1}
