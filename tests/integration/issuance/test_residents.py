"""Residents and social security at the counter: register, link, refuse a mismatch, masked display, audit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from backoffice.errors import Conflict, Forbidden, InvalidInput, NotFound
from issuance import services
from issuance.access import Role, Staff
from issuance.idnumber import IdNumberError
from issuance.lifecycle import InsuredScheme
from issuance.models import Resident, SocialSecurityRecord

if TYPE_CHECKING:
    from conftest import Desk  # tests/integration/issuance/conftest.py


def test_register_and_link(desk: Desk) -> None:
    resident_id = desk.register(0, link=False)
    number = desk.id_numbers[0]
    linked = desk.run(
        services.link_social_security,
        desk.clerk,
        desk.vault,
        resident_id=resident_id,
        ss_number=number.lower(),
        schemes=InsuredScheme.PENSION | InsuredScheme.MEDICAL | InsuredScheme.MATERNITY,
        agency_code="310000",
    )
    assert linked.resident_id == resident_id and linked.ss_number == "110***********002X"
    assert linked.schemes == InsuredScheme(0x13)
    # Personal numbers are sealed at rest: neither the table nor the audit log holds them in clear.
    with desk.uow() as uow:
        resident = uow.session.scalars(select(Resident)).one()
        record = uow.session.scalars(select(SocialSecurityRecord)).one()
        assert number.encode() not in resident.id_number_sealed and number.encode() not in record.ss_number_sealed
        assert resident.id_number_lookup == record.ss_number_lookup  # the same number, found by the same hash
    for entry in desk.audit_actions("resident.register") + desk.audit_actions("social_security.link"):
        assert number not in entry.detail
    # Linking again updates the record (no second record).
    desk.run(
        services.link_social_security,
        desk.clerk,
        desk.vault,
        resident_id=resident_id,
        ss_number=number,
        schemes=InsuredScheme.PENSION,
        agency_code="310001",
    )
    assert desk.count(SocialSecurityRecord) == 1


def test_link_with_another_number_is_refused(desk: Desk) -> None:
    resident_id = desk.register(0, link=False)
    with pytest.raises(InvalidInput, match="differs from the resident's ID number"):
        desk.run(
            services.link_social_security,
            desk.clerk,
            desk.vault,
            resident_id=resident_id,
            ss_number=desk.id_numbers[1],  # a valid number, but not this resident's
            schemes=InsuredScheme.PENSION,
            agency_code="310000",
        )
    assert desk.count(SocialSecurityRecord) == 0
    with pytest.raises(IdNumberError):
        desk.run(
            services.link_social_security,
            desk.clerk,
            desk.vault,
            resident_id=resident_id,
            ss_number="110101199003071234",  # bad check character
            schemes=InsuredScheme.PENSION,
            agency_code="310000",
        )


def test_registration_refusals(desk: Desk) -> None:
    desk.register(0)
    with pytest.raises(Conflict, match="already registered"):
        desk.register(0, name="LI SI")
    with pytest.raises(IdNumberError):
        desk.run(
            services.register_resident,
            desk.clerk,
            desk.vault,
            name="WANG WU",
            id_number="110101199003071234",
            phone="13800000000",
            address="2 Renmin Road",
        )
    with pytest.raises(InvalidInput, match="20 bytes"):
        desk.run(
            services.register_resident,
            desk.clerk,
            desk.vault,
            name="欧阳娜娜娜娜娜娜",  # 24 bytes of UTF-8: does not fit EF 0016
            id_number=desk.id_numbers[1],
            phone="13800000000",
            address="2 Renmin Road",
        )
    with pytest.raises(Forbidden):
        desk.run(
            services.register_resident,
            Staff("fin-1", Role.FINANCE),
            desk.vault,
            name="WANG WU",
            id_number=desk.id_numbers[1],
            phone="13800000000",
            address="2 Renmin Road",
        )


def test_masked_unless_the_role_may_see_and_every_unmasked_read_is_audited(desk: Desk) -> None:
    resident_id = desk.register(0)
    number = desk.id_numbers[0]
    masked = desk.run(services.show_resident, desk.clerk, desk.vault, resident_id=resident_id)
    assert masked.id_number == "110***********002X" and masked.phone == "138****0000" and not masked.unmasked
    assert desk.audit_actions("personal_data.unmasked_read") == []

    shown = desk.run(services.show_resident, desk.supervisor, desk.vault, resident_id=resident_id)
    assert shown.id_number == number and shown.phone == "13800000000" and shown.unmasked
    found = desk.run(services.find_resident, desk.auditor, desk.vault, id_number=number)
    assert found.resident_id == resident_id and found.id_number == number
    ss = desk.run(services.show_social_security, desk.auditor, desk.vault, resident_id=resident_id)
    assert ss.ss_number == number and ss.unmasked
    ss_masked = desk.run(services.show_social_security, desk.clerk, desk.vault, resident_id=resident_id)
    assert ss_masked.ss_number == "110***********002X"

    reads = desk.audit_actions("personal_data.unmasked_read")
    assert [(e.actor_id, e.actor_role, e.object_type) for e in reads] == [
        ("super-1", "supervisor", "resident"),
        ("audit-1", "auditor", "resident"),
        ("audit-1", "auditor", "social_security"),
    ]
    assert all(e.object_id and e.at is not None and number not in e.detail for e in reads)
    with pytest.raises(NotFound):
        desk.run(services.find_resident, desk.clerk, desk.vault, id_number=desk.id_numbers[2])
