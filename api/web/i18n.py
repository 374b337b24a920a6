"""The web pages' labels in English and Chinese, and which language a request is shown in.

A label is looked up by key (:data:`LABELS`); templates call ``t("key")``. The language comes from the
``onecard_lang`` cookie (set by the language switch), else from ``Accept-Language``, else English. Error codes of
the one error hierarchy (:class:`backoffice.errors.OnecardError`) have labels ``error.<code>``; a code without one
is shown by its message alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

Lang = Literal["en", "zh"]
LANGUAGES: tuple[Lang, ...] = ("en", "zh")
LANG_COOKIE = "onecard_lang"
DEFAULT_LANG: Lang = "en"

Translate = Callable[[str], str]

LABELS: dict[str, tuple[str, str]] = {
    # --- frame -------------------------------------------------------------------------------------------------
    "app.title": ("Citizen card back office", "市民卡业务系统"),
    "app.short": ("One-card", "市民卡"),
    "nav.counter": ("Counter desk", "柜台"),
    "nav.finance": ("Finance desk", "财务"),
    "nav.exceptions": ("Exceptions", "异常处理"),
    "nav.statements": ("Statements", "结算单"),
    "nav.reconciliation": ("Reconciliation", "对账"),
    "nav.runs": ("Clearing runs", "清算批次"),
    "nav.logout": ("Log out", "退出"),
    "nav.language": ("中文", "English"),
    "nav.skip": ("Skip to content", "跳到正文"),
    "nav.signed_in_as": ("Signed in as", "当前用户"),
    "nav.desk": ("Desk", "柜台号"),
    "nav.roles": ("Roles", "角色"),
    "common.back": ("Back", "返回"),
    "common.cancel": ("Cancel", "取消"),
    "common.confirm": ("Confirm", "确认"),
    "common.print": ("Print receipt", "打印凭条"),
    "common.show": ("Show", "查看"),
    "common.search": ("Search", "查询"),
    "common.date": ("Date", "日期"),
    "common.none": ("None", "无"),
    "common.yes": ("Yes", "是"),
    "common.no": ("No", "否"),
    "common.ok": ("OK", "正常"),
    "common.failed": ("Failed", "不符"),
    "common.total": ("Total", "合计"),
    "common.amount": ("Amount", "金额"),
    "common.count": ("Count", "笔数"),
    "common.status": ("Status", "状态"),
    "common.note": ("Note", "备注"),
    "common.time": ("Time", "时间"),
    "common.details": ("Details", "详情"),
    "common.error": ("Error", "错误"),
    "common.done": ("Done", "完成"),
    "common.refresh": ("Refresh", "刷新"),
    # --- log-in ------------------------------------------------------------------------------------------------
    "login.title": ("Staff log-in", "员工登录"),
    "login.username": ("Username", "用户名"),
    "login.password": ("Password", "密码"),
    "login.submit": ("Log in", "登录"),
    "login.hint": (
        "Log in with your staff account. The session ends after 8 hours.",
        "请使用员工账号登录，会话 8 小时后失效。",
    ),
    "login.logged_out": ("You have logged out.", "您已退出登录。"),
    "home.title": ("Welcome", "欢迎"),
    "home.no_pages": (
        "Your roles have no desk pages here (administrators use the API).",
        "您的角色没有可用的页面（管理员请使用 API）。",
    ),
    # --- counter -----------------------------------------------------------------------------------------------
    "counter.title": ("Counter desk", "柜台业务"),
    "counter.reader": ("Card in the desk's reader", "读卡器中的卡"),
    "counter.reader_empty": ("The reader is empty.", "读卡器中没有卡。"),
    "counter.reader_blank": (
        "A card that is not issued yet (a blank card can be issued).",
        "卡片尚未发行（空白卡可以发卡）。",
    ),
    "counter.reader_foreign": ("No record of this card here.", "本系统没有此卡的记录。"),
    "counter.reader_check": ("Read the card again", "重新读卡"),
    "counter.no_desk": (
        "Your account has no desk: reader operations are not available.",
        "您的账号未分配柜台，不能使用读卡器。",
    ),
    "counter.find_resident": ("Find a resident", "查找居民"),
    "counter.register_resident": ("Register a resident", "登记居民"),
    "counter.find_card": ("Look up a card", "查询卡片"),
    "counter.anonymous_card": ("Anonymous card", "不记名卡"),
    "counter.apply_anonymous": ("Apply for an anonymous card", "申请不记名卡"),
    "counter.apply_card": ("Apply for a card", "申请办卡"),
    "counter.open_card": ("Open this card", "打开此卡"),
    "resident.title": ("Resident", "居民"),
    "resident.id": ("Resident no.", "居民编号"),
    "resident.name": ("Name", "姓名"),
    "resident.id_number": ("ID number", "身份证号"),
    "resident.phone": ("Mobile phone", "手机号"),
    "resident.address": ("Address", "地址"),
    "resident.register": ("Register", "登记"),
    "resident.registered": ("The resident is registered.", "居民登记成功。"),
    "resident.masked": ("Numbers are shown masked.", "证件号码已脱敏显示。"),
    "ss.title": ("Social security", "社会保障"),
    "ss.none": ("No social-security record is linked yet.", "尚未关联社保记录。"),
    "ss.number": ("Social-security no.", "社会保障号"),
    "ss.number_hint": ("The resident's ID number.", "即居民身份证号。"),
    "ss.schemes": ("Insured schemes", "参保险种"),
    "ss.agency": ("Agency code", "经办机构代码"),
    "ss.status": ("Status", "参保状态"),
    "ss.link": ("Link social security", "关联社保"),
    "ss.linked": ("The social-security record is linked.", "社保记录已关联。"),
    "scheme.pension": ("Pension", "养老保险"),
    "scheme.medical": ("Medical", "医疗保险"),
    "scheme.unemployment": ("Unemployment", "失业保险"),
    "scheme.work_injury": ("Work injury", "工伤保险"),
    "scheme.maternity": ("Maternity", "生育保险"),
    "ss_status.active": ("Active", "正常"),
    "ss_status.suspended": ("Suspended", "暂停"),
    "ss_status.terminated": ("Terminated", "终止"),
    "card.title": ("Card", "卡片"),
    "card.card_no": ("Card no.", "卡号"),
    "card.type": ("Card type", "卡类型"),
    "card.state": ("State", "卡状态"),
    "card.registered": ("Registered", "记名"),
    "card.balance": ("Balance (back office)", "余额（后台）"),
    "card.limit": ("Purse limit", "钱包上限"),
    "card.chip": ("Chip serial", "芯片序列号"),
    "card.hotlisted": ("Hotlisted at", "挂失时间"),
    "card.city_code": ("City code", "城市代码"),
    "card.services": ("Other services", "其他业务"),
    "card.applied": ("The card is applied for: issue it on a blank card next.", "已受理办卡申请，请在空白卡上发卡。"),
    "card_type.adult": ("Adult", "普通卡"),
    "card_type.student": ("Student", "学生卡"),
    "card_type.senior": ("Senior", "老年卡"),
    "card_type.disabled": ("Disabled", "残疾人卡"),
    "card_type.staff": ("Staff", "员工卡"),
    "state.applied": ("Applied", "已申请"),
    "state.personalised": ("Personalised", "已个人化"),
    "state.active": ("Active", "正常"),
    "state.blocked": ("Blocked", "已锁定"),
    "state.locked": ("Locked", "已冻结"),
    "state.lost": ("Lost", "已挂失"),
    "state.replaced": ("Replaced", "已补换"),
    "state.refunded": ("Refunded", "已退卡"),
    "state.cancelled": ("Cancelled", "已注销"),
    "issue.title": ("Issue the card", "发卡"),
    "issue.hint": (
        "Place a blank card on the desk's reader. The resident chooses a PIN of 4 to 12 digits.",
        "请将空白卡放在柜台读卡器上，由居民设置 4 至 12 位数字密码。",
    ),
    "issue.pin": ("PIN", "密码"),
    "issue.pin_again": ("PIN again", "再次输入密码"),
    "issue.social_pin": ("Social-security PIN (optional)", "社保密码（可选）"),
    "issue.submit": ("Issue the card in the reader", "在读卡器中发卡"),
    "issue.done": ("Card issued", "发卡成功"),
    "issue.pins_differ": ("The two PINs differ.", "两次输入的密码不一致。"),
    "load.title": ("Load cash", "现金充值"),
    "load.amount": ("Amount (yuan)", "充值金额（元）"),
    "load.hint": ("The card must be on the desk's reader.", "卡片须放在柜台读卡器上。"),
    "load.submit": ("Load…", "充值…"),
    "load.confirm_title": ("Confirm the load", "确认充值"),
    "load.confirm_text": (
        "Collect the cash from the resident, then load it onto the card.",
        "请先向居民收取现金，再充值到卡上。",
    ),
    "load.collect": ("Cash to collect", "应收现金"),
    "load.confirm": ("Load now", "确认充值"),
    "load.done": ("Load receipt", "充值凭条"),
    "load.balance_after": ("Balance after", "充值后余额"),
    "load.replayed": (
        "This load had already been made: the first receipt is shown again.",
        "该笔充值已完成，以下为原凭条。",
    ),
    "load.unconfirmed": (
        "The card left the reader before the load was confirmed. Put it back and check the balance.",
        "充值确认前卡片离开了读卡器，请重新放卡并核对余额。",
    ),
    "load.status": ("Outcome", "结果"),
    "load.invalid_amount": ("Enter an amount in yuan, e.g. 50 or 12.50.", "请输入以元为单位的金额，如 50 或 12.50。"),
    "receipt.term_id": ("Terminal", "终端号"),
    "receipt.term_seq": ("Terminal seq.", "终端流水号"),
    "receipt.card_seq": ("Card seq.", "卡交易序号"),
    "receipt.tac": ("TAC", "TAC"),
    "receipt.date": ("Date and time", "交易时间"),
    "receipt.operator": ("Operator", "经办人"),
    "receipt.desk": ("Desk", "柜台"),
    "loss.title": ("Report loss", "挂失"),
    "loss.reason": ("Reason", "原因"),
    "loss.confirm_text": (
        "The card is hotlisted at once: validators refuse it from their next hotlist update.",
        "卡片将立即列入黑名单，各终端更新黑名单后拒绝此卡。",
    ),
    "loss.submit": ("Report the card", "确认挂失"),
    "loss.done": ("Loss reported", "挂失成功"),
    "loss.version": ("Hotlist version", "黑名单版本"),
    "loss.listed_at": ("Listed at", "列入时间"),
    "reason.lost": ("Lost", "遗失"),
    "reason.stolen": ("Stolen", "被盗"),
    "reason.damaged": ("Damaged", "损坏"),
    "replace.title": ("Replace the card", "补卡"),
    "replace.confirm_text": (
        "A new card is applied for; the old card's balance moves to it once clearing has seen every purchase.",
        "将申请一张新卡；旧卡余额在清算完成后转入新卡。",
    ),
    "replace.submit": ("Replace", "确认补卡"),
    "replace.done": ("Replacement", "补卡受理"),
    "replace.new_card": ("New card", "新卡"),
    "replace.issue_next": ("Issue the new card", "为新卡发卡"),
    "refund.title": ("Refund the card", "退卡"),
    "refund.present": ("The card is on the desk's reader (block it for good now)", "卡片在读卡器上（立即永久锁卡）"),
    "refund.confirm_text": (
        "The card is closed for good and its balance refunded (now when the chip agrees, else after clearing).",
        "卡片将永久注销，余额退还（芯片余额一致时立即退，否则清算后退）。",
    ),
    "refund.submit": ("Refund", "确认退卡"),
    "refund.done": ("Refund", "退卡受理"),
    "block.title": ("Block the card", "锁卡"),
    "block.confirm_text": (
        "The purse of the card on the desk's reader is blocked: no payments or loads until a supervisor lifts it.",
        "将锁定读卡器上卡片的电子钱包：在主管解锁前不能消费或充值。",
    ),
    "block.permanent": ("Block for good (locked and hotlisted; cannot be undone)", "永久锁定（列入黑名单，不可撤销）"),
    "block.submit": ("Block", "确认锁卡"),
    "block.done": ("Card blocked", "锁卡成功"),
    "unblock.title": ("Unblock the card", "解锁"),
    "unblock.confirm_text": (
        "The temporary block of the card on the desk's reader is lifted: the card works again.",
        "将解除读卡器上卡片的临时锁定，卡片恢复使用。",
    ),
    "unblock.submit": ("Unblock", "确认解锁"),
    "unblock.done": ("Card unblocked", "解锁成功"),
    "resolve.title": ("Resolve unconfirmed loads", "处理未确认充值"),
    "resolve.hint": (
        "A load on this card was not confirmed: put the card on the reader and resolve it.",
        "此卡有未确认的充值，请将卡片放在读卡器上进行处理。",
    ),
    "resolve.confirm_text": (
        "The card on the desk's reader is asked for its proof: each load is counted, voided, or left to clearing.",
        "将向读卡器上的卡片读取交易证明：每笔充值将被确认、作废或交由清算处理。",
    ),
    "resolve.submit": ("Resolve", "确认处理"),
    "resolve.done": ("Unconfirmed loads", "未确认充值处理结果"),
    "resolve.load": ("Load", "充值"),
    "resolve.result": ("Result", "结果"),
    "resolve.none": ("No load awaited resolution.", "没有待处理的充值。"),
    "settlement.id": ("Settlement no.", "结算编号"),
    "settlement.kind": ("Kind", "类型"),
    "settlement.from": ("From card", "原卡"),
    "settlement.to": ("To card", "新卡"),
    "settlement.cutoff": ("Cut-off", "截止时间"),
    "settlement.payout": ("Pay out in cash", "现金支付"),
    "settlement.paid": ("Paid out", "已支付"),
    "kind.transfer": ("Transfer", "转移"),
    "kind.refund": ("Refund", "退款"),
    "kind.cancel": ("Cancellation", "注销"),
    "sstatus.pending": ("Pending clearing", "待清算"),
    "sstatus.ready": ("Ready to pay out", "待支付"),
    "sstatus.done": ("Done", "已完成"),
    "lstatus.authorized": ("Authorised", "已授权"),
    "lstatus.ok": ("Loaded", "充值成功"),
    "lstatus.proof": ("Loaded (proven)", "充值成功（已证实）"),
    "lstatus.unconfirmed": ("Unconfirmed", "未确认"),
    "lstatus.void": ("Void", "无效"),
    "lstatus.rejected": ("Rejected", "被拒绝"),
    # --- finance -----------------------------------------------------------------------------------------------
    "finance.title": ("Finance desk", "财务清算"),
    "finance.day": ("Clearing day", "清算日"),
    "finance.glance": ("The day at a glance", "当日概览"),
    "finance.operators": ("Volumes and amounts per operator", "各运营商交易量与金额"),
    "finance.by_hour": ("Volume by hour", "分时交易量"),
    "finance.amount_by_operator": ("Amount by operator (yuan)", "各运营商金额（元）"),
    "finance.no_data": ("Nothing cleared for this day yet.", "该日尚无清算数据。"),
    "finance.run": ("Run clearing", "执行清算"),
    "finance.run_hint": (
        "Clears every accepted batch up to the end of the day; a day closes when its reconciliation holds.",
        "清算截至当日结束的全部已接收批次；对账一致后该日关账。",
    ),
    "finance.run_started": ("Clearing run started.", "清算已启动。"),
    "finance.runs": ("Runs of the day", "当日清算批次"),
    "finance.downloads": ("Reports", "报表下载"),
    "finance.open_exceptions": ("Open exceptions", "待处理异常"),
    "operator.id": ("Operator", "运营商"),
    "operator.fee": ("Fee", "手续费"),
    "operator.payable": ("Payable", "应付金额"),
    "run.title": ("Clearing run", "清算批次"),
    "run.id": ("Run", "批次"),
    "run.started_by": ("Started by", "发起人"),
    "run.started_at": ("Started", "开始时间"),
    "run.finished_at": ("Finished", "结束时间"),
    "run.progress": ("Progress", "进度"),
    "run.records": ("Records", "记录数"),
    "run.result": ("Result", "清算结果"),
    "run.watching": ("This page follows the run as it goes.", "本页面自动跟踪清算进度。"),
    "run.classes": ("Records by class", "按类别统计"),
    "rstatus.queued": ("Queued", "排队中"),
    "rstatus.running": ("Running", "进行中"),
    "rstatus.finished": ("Finished", "已完成"),
    "rstatus.failed": ("Failed", "失败"),
    "exc.title": ("Exceptions queue", "异常队列"),
    "exc.id": ("No.", "编号"),
    "exc.class": ("Class", "类别"),
    "exc.code": ("Reason", "原因代码"),
    "exc.record": ("Record", "交易记录"),
    "exc.proposal": ("Proposal", "处理建议"),
    "exc.propose": ("Propose", "提交建议"),
    "exc.action": ("Action", "处理方式"),
    "exc.decide": ("Decision", "审批"),
    "exc.approve": ("Approve", "批准"),
    "exc.refuse": ("Refuse", "驳回"),
    "exc.proposed_by": ("Proposed by", "提议人"),
    "exc.decided_by": ("Decided by", "审批人"),
    "exc.empty": ("No exceptions here.", "没有异常记录。"),
    "exc.proposed": (
        "The proposal is recorded; another member of staff approves it.",
        "处理建议已提交，需由另一名员工审批。",
    ),
    "exc.decided": ("The decision is recorded.", "审批结果已记录。"),
    "exc.four_eyes": ("You proposed this one: another member of staff decides.", "此建议由您提出，须由他人审批。"),
    "exc.filter_all": ("All", "全部"),
    "exc.amount": ("Amount to settle (yuan, adjust only)", "调整金额（元，仅限调整）"),
    "exc.amount_hint": (
        "For an adjustment: the amount to settle, at most the record's amount.",
        "调整时填写：应结算的金额，不超过原交易金额。",
    ),
    "xstatus.open": ("Open", "待处理"),
    "xstatus.proposed": ("Proposed", "待审批"),
    "xstatus.resolved": ("Resolved", "已处理"),
    "xclass.settled": ("Settled", "已结算"),
    "xclass.duplicate": ("Duplicate", "重复"),
    "xclass.rejected": ("Rejected", "拒付"),
    "xclass.suspicious": ("Suspicious", "可疑"),
    "xclass.conflict": ("Conflict", "冲突"),
    "xclass.pending": ("Pending", "挂起"),
    "action.accept": ("Accept", "接受"),
    "action.reject": ("Reject", "拒绝"),
    "action.adjust": ("Adjust", "调整"),
    "action.write_off": ("Write off", "核销"),
    "action.recharge": ("Recharge", "补扣"),
    "stmt.title": ("Settlement statements", "结算单"),
    "stmt.download": ("Download", "下载"),
    "recon.title": ("Reconciliation", "对账"),
    "recon.ok": ("Every check holds.", "全部核对一致。"),
    "recon.failed": ("Some checks disagree.", "部分核对不一致。"),
    "recon.check": ("Check", "核对项"),
    "recon.expected": ("Expected", "应为"),
    "recon.actual": ("Actual", "实际"),
    "report.json": ("JSON", "JSON"),
    "report.csv": ("CSV", "CSV"),
    "report.xlsx": ("Excel", "Excel"),
    "report.pdf": ("PDF", "PDF"),
    # --- errors (codes of backoffice.errors and its refinements) -----------------------------------------------
    "error.title": ("Something went wrong", "操作未成功"),
    "error.invalid_input": ("Some of the input is not valid.", "输入有误。"),
    "error.not_found": ("Not found.", "未找到。"),
    "error.conflict": ("The current state does not allow this.", "当前状态不允许此操作。"),
    "error.unauthorized": ("Please log in.", "请先登录。"),
    "error.forbidden": ("Your roles may not do this.", "您的角色无权执行此操作。"),
    "error.rate_limited": ("Too many attempts: wait a moment and try again.", "操作过于频繁，请稍后再试。"),
    "error.card_refused": ("The card refused the operation.", "卡片拒绝了此操作。"),
    "error.device_unavailable": ("The reader is not available.", "读卡器不可用。"),
    "error.no_card_in_reader": ("There is no card on the desk's reader.", "读卡器上没有卡。"),
    "error.wrong_card_in_reader": ("Another card is on the desk's reader.", "读卡器上是另一张卡。"),
    "error.desk_busy": ("The desk's reader is busy: try again.", "读卡器忙，请重试。"),
    "error.counter_unavailable": ("The counter is not configured on this server.", "本服务器未配置柜台业务。"),
    "error.not_built": ("This is not available yet.", "此功能尚未开放。"),
    "error.unavailable": ("A service does not answer.", "服务暂不可用。"),
    "error.idempotency_conflict": ("This form was already used for another load.", "此表单已用于另一笔充值。"),
    "error.idempotency_in_progress": ("This load is still running: wait and look again.", "此笔充值仍在处理中。"),
    "error.keystore_error": ("The keystore cannot serve the request.", "密钥系统无法处理此请求。"),
    "error.reconciliation_failed": ("A reconciliation check failed.", "对账核对失败。"),
    "error.internal_error": ("Internal error.", "系统内部错误。"),
    "error.form_expired": ("The form has expired: open the page again.", "表单已过期，请重新打开页面。"),
}
"""Every label: key → (English, Chinese)."""


def normalise(value: str | None) -> Lang | None:
    """``en`` or ``zh`` for a language tag (``zh-CN`` → ``zh``), else ``None``."""
    if not value:
        return None
    primary = value.strip().lower().replace("_", "-").split("-")[0]
    for lang in LANGUAGES:
        if primary == lang:
            return lang
    return None


def negotiate(cookie: str | None, accept_language: str | None) -> Lang:
    """The language to show: the cookie's, else the first known one of ``Accept-Language``, else English."""
    chosen = normalise(cookie)
    if chosen is not None:
        return chosen
    for part in (accept_language or "").split(","):
        found = normalise(part.split(";")[0])
        if found is not None:
            return found
    return DEFAULT_LANG


def other(lang: Lang) -> Lang:
    """The language the switch offers."""
    return "zh" if lang == "en" else "en"


def label(key: str, lang: Lang) -> str:
    """The label of ``key`` in ``lang`` (the key itself when there is none, so a gap is visible)."""
    pair = LABELS.get(key)
    if pair is None:
        return key
    return pair[0] if lang == "en" else pair[1]


def translator(lang: Lang, labels: Mapping[str, tuple[str, str]] = LABELS) -> Translate:
    """``t(key)`` for templates."""
    index = 0 if lang == "en" else 1

    def t(key: str) -> str:
        pair = labels.get(key)
        return key if pair is None else pair[index]

    return t


def has_label(key: str) -> bool:
    """Whether ``key`` has labels."""
    return key in LABELS
