! A user-defined loss (written here, outside the library): MSE plus a penalty on the violation of
! a conservation law (the column sum of the outputs must equal that of the targets, as the mass
! constraint of Brajard et al. 2018). Trained from the same start, it conserves better than MSE.
module conservation_loss
  use colnn
  implicit none
  private
  public :: conserving_mse_t

  type, extends(loss_t) :: conserving_mse_t
    real(wp) :: lambda = 1
  contains
    procedure :: evaluate => conserving_evaluate
  end type conserving_mse_t

contains

  subroutine conserving_evaluate(self, y, t, value, dy)
    class(conserving_mse_t), intent(in) :: self
    real(wp), intent(in) :: y(:, :), t(:, :)
    real(wp), intent(out) :: value
    real(wp), intent(out) :: dy(:, :)
    integer :: j, n, nc
    real(wp) :: d
    n = size(y, 1)
    nc = size(y, 2)
    value = sum((y - t)**2) / (n * nc)
    dy = 2 * (y - t) / (n * nc)
    do j = 1, nc
      d = sum(y(:, j)) - sum(t(:, j))
      value = value + self%lambda * d * d / nc
      dy(:, j) = dy(:, j) + 2 * self%lambda * d / nc
    end do
  end subroutine conserving_evaluate
end module conservation_loss

program test_custom_loss
  use colnn
  use conservation_loss, only: conserving_mse_t
  implicit none
  integer, parameter :: n = 4, nb = 64, steps = 1500
  type(network_t) :: plain, constrained
  type(trainer_t) :: t_plain, t_cons
  type(conserving_mse_t) :: closs
  integer :: stat, u, s, j
  character(len=ERRMSG_LEN) :: msg
  real(wp) :: p(n, n), x(n, nb), t(n, nb), loss, xt(n, 1000), tt(n, 1000), yt(n, 1000)
  real(wp) :: v_plain, v_cons
  character(len=1), parameter :: nl = new_line('a')

  open (newunit=u, file='loss_model.colnn', status='replace', access='stream', form='unformatted')
  write (u) 'colnn 1'//nl//'precision float32'//nl//'inputs 4'//nl//'outputs 4'//nl//'layers 2'//nl// &
    'layer dense'//nl//'name h'//nl//'units 6'//nl//'use_bias true'//nl//'activation tanh'//nl// &
    'tensor kernel 4 6'//nl//'0.3 -0.2 0.1 0.5 -0.4 0.2'//nl//'0.1 0.4 -0.3 0.2 0.3 -0.1'//nl// &
    '-0.2 0.1 0.4 -0.3 0.2 0.3'//nl//'0.4 -0.1 0.2 0.1 -0.3 0.2'//nl// &
    'tensor bias 6'//nl//'0 0 0 0 0 0'//nl//'end'//nl// &
    'layer dense'//nl//'name o'//nl//'units 4'//nl//'use_bias true'//nl//'activation linear'//nl// &
    'tensor kernel 6 4'//nl//'0.2 -0.1 0.3 0.1'//nl//'-0.3 0.2 0.1 0.2'//nl//'0.1 0.3 -0.2 0.1'//nl// &
    '0.2 0.1 0.2 -0.3'//nl//'-0.1 0.2 0.3 0.1'//nl//'0.3 -0.2 0.1 0.2'//nl// &
    'tensor bias 4'//nl//'0 0 0 0'//nl//'end'//nl
  close (u)
  call plain%load('loss_model.colnn', stat, msg)
  call constrained%load('loss_model.colnn', stat, msg)
  if (stat /= 0) error stop 'load failed'

  ! targets: a nonlinear map whose column sum equals that of the inputs
  call t_plain%configure('adam learning_rate=0.01', 'mse', stat, msg)
  call t_cons%configure('adam learning_rate=0.01', 'mse', stat, msg)
  closs%lambda = 5
  call t_cons%set_loss(closs)
  call random_seed(put=[(17 * j, j = 1, 64)])
  do s = 1, steps
    call random_number(x)
    x = 2 * x - 1
    call make_targets(x, t)
    call t_plain%train_step(plain, x, t, loss, stat, msg)
    if (stat /= 0) error stop 'plain train_step failed'
    call t_cons%train_step(constrained, x, t, loss, stat, msg)
    if (stat /= 0) error stop 'constrained train_step failed'
  end do
  call random_number(xt)
  xt = 2 * xt - 1
  call make_targets(xt, tt)
  call plain%forward(xt, yt, stat, msg)
  v_plain = sum(abs(sum(yt, dim=1) - sum(tt, dim=1))) / 1000
  call constrained%forward(xt, yt, stat, msg)
  v_cons = sum(abs(sum(yt, dim=1) - sum(tt, dim=1))) / 1000
  print '(a,es10.3,a,es10.3)', 'mean |conservation violation|: mse ', v_plain, ', mse + penalty ', v_cons
  if (.not. (v_cons < 0.6_wp * v_plain)) then
    print '(a)', 'FAIL: the custom loss did not reduce the constraint violation'
    error stop 1
  end if
  ! the epoch helper: shuffled minibatches, then the validation loss at inference
  call t_plain%train_epoch(plain, xt, tt, 100, 7_8, 1, loss, stat, msg, x_val=xt, t_val=tt, &
                           val_loss=v_plain)
  if (stat /= 0 .or. .not. (v_plain > 0 .and. v_plain < 1)) then
    print '(a,i0,a,es10.3)', 'FAIL: train_epoch stat ', stat, ' val loss ', v_plain
    error stop 1
  end if
  ! the files it wrote go (fpm test runs in the project's root)
  open (newunit=u, file='loss_model.colnn', status='old')
  close (u, status='delete')
  print '(a)', 'test_custom_loss: all passed'

contains

  subroutine make_targets(x, t)
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: t(:, :)
    integer :: j
    do j = 1, size(x, 2)
      t(:, j) = [x(2, j)**2, x(1, j) - x(2, j)**2, 0.5_wp * x(3, j) + x(4, j), 0.5_wp * x(3, j)]
    end do
  end subroutine make_targets
end program test_custom_loss
